"""The wire format: round trips, explicit non-finite values, and rejection of hostile frames."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spikewatch.protocol import nonfinite, wire
from spikewatch.protocol.names import Combine

SESSION = "0123456789abcdef0123456789abcdef"


def _header(seq: int = 1) -> wire.Header:
    return wire.Header(session=SESSION, seq=seq, run="run-1", rank=1, world_size=2, sent_at=1.0)


def _record(step: int = 7) -> wire.Record:
    return wire.Record(
        step=step,
        time=1700000000.5,
        scalars={"loss": math.nan, "grad_norm": math.inf, "lr": -math.inf, "rho": 0.25},
        layers={"rho": {"fc1.weight": 0.1, "blocks.0.attn/q": 2.0}},
        hists={"sa_hist": {"fc1": wire.Histogram(-1.0, 1.0, (0, 3, 5, 0), nonfinite=2)}},
        partials={"rho": wire.Partial(Combine.SQRT_RATIO, 4.0, 16.0)},
        events=(wire.Event("nonfinite", {"what": "loss", "value": math.nan, "ok": False}),),
    )


def _raw(doc: object, *, version: int = wire.VERSION, compress: bool = False) -> bytes:
    body = json.dumps(doc).encode()
    if compress:
        return wire.MAGIC + bytes((version, wire.FLAG_ZLIB)) + zlib.compress(body)
    return wire.MAGIC + bytes((version, 0)) + body


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_batch_round_trip_keeps_non_finite_values() -> None:
    msg = wire.Batch(_header(), (_record(),))
    out = wire.decode(wire.encode(msg))
    assert isinstance(out, wire.Batch)
    assert out.header == msg.header
    rec = out.records[0]
    for k, v in msg.records[0].scalars.items():
        assert _same(rec.scalars[k], v), k
    assert rec.layers == msg.records[0].layers
    assert rec.hists == msg.records[0].hists
    assert rec.partials == msg.records[0].partials
    assert rec.events[0].type == "nonfinite"
    assert math.isnan(rec.events[0].data["value"])  # type: ignore[arg-type]
    assert rec.events[0].data["ok"] is False


@pytest.mark.parametrize(("x", "json_name", "wire_name"), [
    (math.nan, "NaN", "nan"), (math.inf, "Infinity", "inf"), (-math.inf, "-Infinity", "-inf")])
def test_one_definition_of_the_nonfinite_names(x: float, json_name: str, wire_name: str) -> None:
    assert nonfinite.to_json(x) == json_name
    assert nonfinite.to_wire(x) == wire_name
    assert _same(nonfinite.from_json(json_name), x)  # type: ignore[arg-type]
    assert _same(nonfinite.from_json(wire_name), x)  # type: ignore[arg-type]
    assert _same(nonfinite.from_wire(wire_name), x)  # type: ignore[arg-type]
    assert nonfinite.from_wire(json_name) is None  # on the wire a JSON name is text
    assert nonfinite.to_json(1.5) == nonfinite.to_wire(1.5) == 1.5
    assert nonfinite.from_json("1.5") is None


def test_the_wire_keeps_its_v1_spelling_and_json_names_stay_text() -> None:
    frame = wire.encode(wire.Batch(_header(), (_record(),)))
    assert frame[3] == 0  # not compressed: the JSON is readable as is
    scalars = json.loads(frame[4:])["records"][0]["scalars"]
    assert scalars == {"loss": "nan", "grad_norm": "inf", "lr": "-inf", "rho": 0.25}
    out = wire.decode(wire.encode(wire.Hello(_header(), {"note": "NaN", "top": math.inf})))
    assert isinstance(out, wire.Hello)
    assert out.meta == {"note": "NaN", "top": math.inf}


def test_hello_round_trip() -> None:
    meta: dict[str, wire.Scalar] = {"optimizer": "AdamW", "lr": 0.01, "params": 1234, "x": None}
    out = wire.decode(wire.encode(wire.Hello(_header(), meta)))
    assert isinstance(out, wire.Hello)
    assert dict(out.meta) == meta


def test_large_batches_are_compressed_and_round_trip() -> None:
    records = tuple(_record(step) for step in range(200))
    frame = wire.encode(wire.Batch(_header(), records))
    assert frame[3] & wire.FLAG_ZLIB
    out = wire.decode(frame)
    assert isinstance(out, wire.Batch)
    assert [r.step for r in out.records] == list(range(200))


def test_replies_round_trip() -> None:
    ack = wire.Ack(SESSION, (1, 2, 3))
    assert wire.decode_reply(wire.encode(ack)) == ack
    nack = wire.Nack(SESSION, 4, "bad_schema")
    assert wire.decode_reply(wire.encode(nack)) == nack
    alert = wire.Alert(SESSION, "run-1", "predicted_loss_spike", "page", "firing", 812, 1.02,
                       "Run run-1: loss spike predicted")
    assert wire.decode_reply(wire.encode(alert)) == alert
    blown = wire.decode_reply(wire.encode(wire.Alert(SESSION, "r", "nonfinite_loss", "page",
                                                     "firing", 3, math.nan)))
    assert isinstance(blown, wire.Alert)
    assert math.isnan(blown.value)


def _reply(doc: dict[str, object]) -> bytes:
    return wire.MAGIC + bytes((wire.VERSION, 0)) + json.dumps(doc).encode()


@pytest.mark.parametrize(("change", "reason"), [
    ({"severity": "critical"}, "bad_value"),
    ({"state": "pending"}, "bad_value"),
    ({"rule": "no spaces"}, "bad_name"),
    ({"step": -1}, "bad_value"),
    ({"summary": 3}, "bad_value"),
    ({"extra": 1}, "bad_schema"),
])
def test_a_malformed_alert_is_refused(change: dict[str, object], reason: str) -> None:
    doc = {"type": "alert", "session": SESSION, "run": "r", "rule": "loss_spike",
           "severity": "page", "state": "firing", "step": 3, "value": 1.0, "summary": ""}
    with pytest.raises(wire.WireError) as e:
        wire.decode_reply(_reply({**doc, **change}))
    assert e.value.reason == reason


def test_every_alert_the_server_tells_is_one_the_wire_carries() -> None:
    from spikewatch.server.types import AlertState, Severity

    assert {s.value for s in Severity} == wire.ALERT_SEVERITIES
    assert {AlertState.FIRING.value, AlertState.RESOLVED.value} == wire.ALERT_STATES


def test_a_reply_of_an_unknown_type_says_so() -> None:
    """A newer server's reply: the agent skips what `unknown_type` names, quietly."""
    with pytest.raises(wire.WireError) as e:
        wire.decode_reply(_reply({"type": "advice", "session": SESSION}))
    assert e.value.reason == "unknown_type"


def test_bare_json_nan_is_rejected() -> None:
    doc = '{"type":"batch","records":[NaN]}'
    with pytest.raises(wire.WireError) as e:
        wire.decode(wire.MAGIC + bytes((wire.VERSION, 0)) + doc.encode())
    assert e.value.reason == "bad_value"


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "bad_header"),
        (b"XX\x01\x00{}", "bad_header"),
        (b"SW\x09\x00{}", "bad_version"),
        (b"SW\x01\x80{}", "bad_header"),
        (b"SW\x01\x01not zlib", "bad_compression"),
        (b"SW\x01\x00{not json", "bad_json"),
        (b"SW\x01\x00" + b"[" * 50 + b"]" * 50, "too_deep"),
        (b"SW\x01\x00" + b"\xff\xfe", "bad_json"),
        (b"SW\x01\x00" + b"x" * (wire.MAX_FRAME_BYTES + 1), "oversize"),
    ],
)
def test_malformed_frames_rejected_with_reason(frame: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError) as e:
        wire.decode(frame)
    assert e.value.reason == reason


def test_decompression_bomb_rejected() -> None:
    bomb = wire.MAGIC + bytes((wire.VERSION, wire.FLAG_ZLIB)) + zlib.compress(b" " * (64 << 20), 9)
    assert len(bomb) < wire.MAX_FRAME_BYTES
    with pytest.raises(wire.WireError) as e:
        wire.decode(bomb)
    assert e.value.reason == "oversize"


def _valid_doc() -> dict[str, object]:
    return {"type": "batch", "session": SESSION, "seq": 1, "run": "r", "rank": 0,
            "world_size": 1, "sent_at": 0.0, "records": [{"step": 1, "time": 0.0}]}


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"extra": 1}, "bad_schema"),
        ({"seq": 0}, "bad_value"),
        ({"seq": True}, "bad_value"),
        ({"session": "nothex"}, "bad_name"),
        ({"run": "has space"}, "bad_name"),
        ({"world_size": 0}, "bad_value"),
        ({"rank": 1}, "bad_value"),  # rank ≥ world_size: stored under no rank anyone reads
        ({"records": [{"step": -1, "time": 0}]}, "bad_value"),
        ({"records": [{"step": 1, "time": 0, "scalars": {"Bad-Name": 1}}]}, "bad_name"),
        ({"records": [{"step": 1, "time": 0, "scalars": {"loss": "1.0"}}]}, "bad_value"),
        ({"records": [{"step": 1, "time": 0, "layers": {"rho": {"x y": 1}}}]}, "bad_name"),
        ({"records": [{"step": 1, "time": 0, "hists": {"h": {"l": {
            "lo": 1, "hi": -1, "counts": [1]}}}}]}, "bad_value"),
        ({"records": [{"step": 1, "time": 0, "hists": {"h": {"l": {
            "lo": -1, "hi": 1, "counts": [1] * (wire.MAX_BINS + 1)}}}}]}, "too_many"),
        ({"records": [{"step": 1, "time": 0, "partials": {"rho": {"op": "avg", "num": 1}}}]},
         "bad_value"),
        ({"records": [{"step": 1, "time": 0}] * (wire.MAX_RECORDS + 1)}, "too_many"),
        ({"records": [{"step": 1, "time": 0, "scalars": {
            f"m{i}": 1.0 for i in range(wire.MAX_METRICS_PER_RECORD + 1)}}]}, "too_many"),
    ],
)
def test_schema_violations_rejected(patch: dict[str, object], reason: str) -> None:
    doc = _valid_doc() | patch
    with pytest.raises(wire.WireError) as e:
        wire.decode(_raw(doc, compress=True))
    assert e.value.reason == reason


def test_encode_refuses_frames_over_the_limit() -> None:
    rng = random.Random(0)
    big = {f"l{i}": rng.random() for i in range(wire.MAX_LAYERS_PER_METRIC)}
    records = tuple(wire.Record(step=s, time=0.0, layers={"rho": big}) for s in range(40))
    with pytest.raises(ValueError, match="exceeds"):
        wire.encode(wire.Batch(_header(), records))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    for frame in (data, wire.MAGIC + bytes((wire.VERSION, 0)) + data):
        try:
            wire.decode(frame)
        except wire.WireError as e:
            assert e.reason in wire.WireError.REASONS


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=10), c, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*sorted(_valid_doc()), "x"]), _json, max_size=9))
def test_random_documents_are_rejected_or_fully_valid(doc: dict[str, object]) -> None:
    try:
        msg = wire.decode(_raw(doc))
    except wire.WireError as e:
        assert e.reason in wire.WireError.REASONS
    else:
        assert wire.decode(wire.encode(msg)) == msg


def test_wire_imports_without_torch() -> None:
    code = ("import sys, spikewatch.protocol.wire, spikewatch.protocol.names; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
