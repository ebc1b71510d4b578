"""Hostile input on the ingest path: the real collector socket, `wire.decode` and `Store.write`.

Random frames, wrong versions, oversize payloads, zip bombs, deep nesting, unknown fields, huge
histograms and name floods. The server stays up (a valid message afterwards is acked and stored),
nacks and counts every rejected frame by reason, stores nothing malformed, and a flood of run,
metric or layer names is bounded (refused series counted in ``spikewatch_refused_series_total``)
in the database and in the Prometheus exposition.
"""

from __future__ import annotations

import json
import math
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from spikewatch.protocol import wire
from spikewatch.protocol.names import EXPORTED
from spikewatch.server._cardinality import RESYNC_S, Cardinality, Limits
from spikewatch.server._stats import Stats
from spikewatch.server.collector import Collector
from spikewatch.server.exporter import DEFAULT_MAX_RUNS, StoreExportSource, build_registry
from spikewatch.server.store import Store
from tests.reliability._ingest import RawAgent, batch_doc, frame

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=12)


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    s = Store(sqlite_url)
    s.upgrade()
    yield s
    s.close()


def start_collector(store: Store, stats: Stats, limits: Limits | None = None) -> Collector:
    c = Collector(store, stats, "tcp://127.0.0.1:*", limits=limits)
    c.start()
    return c


@pytest.fixture
def stats() -> Stats:
    return Stats()


@pytest.fixture
def collector(store: Store, stats: Stats) -> Iterator[Collector]:
    c = start_collector(store, stats)
    yield c
    c.stop()


@pytest.fixture
def agent(collector: Collector) -> Iterator[RawAgent]:
    assert collector.bound_endpoint is not None
    a = RawAgent(collector.bound_endpoint)
    yield a
    a.close()


def assert_still_serving(agent: RawAgent, store: Store, run: str = "after-fuzz") -> None:
    """A valid batch is acked and stored after whatever came before."""
    doc = batch_doc(run=run)
    doc["records"][0]["step"] = 777_777
    reply = agent.call(frame(doc))
    assert reply == wire.Ack(doc["session"], (1,)), reply
    assert [p.value for p in store.series(run, "loss", step_min=777_777)] == [1.5]


def row_counts(store: Store) -> dict[str, int]:
    with store.connection() as conn:
        return {t: int(conn.exec_driver_sql(f'SELECT COUNT(*) FROM "{t}"').scalar_one())
                for t in ("runs", "sessions", "scalars", "layer_values", "histograms", "events")}


# --- hostile frames through the real socket -----------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    doc = batch_doc()
    deep: Any = 1
    for _ in range(depth):
        deep = [deep]
    doc["records"][0]["events"] = [{"type": "x", "data": {"k": deep}}]
    return doc


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    doc = batch_doc()
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def _hello(meta: dict[str, Any]) -> dict[str, Any]:
    doc = batch_doc()
    del doc["records"]
    return {**doc, "type": "hello", "meta": meta}


HOSTILE: dict[str, tuple[Callable[[], list[bytes]], str]] = {
    "empty frame": (lambda: [b""], "bad_header"),
    "no magic": (lambda: [b"XX\x01\x00{}"], "bad_header"),
    "wrong version": (lambda: [frame(batch_doc(), version=2)], "bad_version"),
    "version zero": (lambda: [frame(batch_doc(), version=0)], "bad_version"),
    "unknown flags": (lambda: [frame(batch_doc(), flags=0x80)], "bad_header"),
    "two frames": (lambda: [frame(batch_doc()), frame(batch_doc())], "bad_header"),
    "not json": (lambda: [frame(None, raw=b"{\"type\": batch")], "bad_json"),
    "not utf-8": (lambda: [frame(None, raw=b"\xff\xfe\x00")], "bad_json"),
    "bare NaN": (lambda: [frame(None, raw=json.dumps(batch_doc()).replace(
        '"loss": 1.5', '"loss": NaN').encode())], "bad_value"),
    "truncated zlib": (lambda: [frame(batch_doc(), flags=1)[:-7]], "bad_compression"),
    "garbage zlib": (lambda: [wire.MAGIC + bytes((wire.VERSION, 1)) + b"\x00\x01garbage"],
                     "bad_compression"),
    "zip bomb": (lambda: [frame(None, flags=1, raw=b"[" + b" " * (9 << 20) + b"]")],
                 "oversize"),
    "oversize frame": (lambda: [frame(batch_doc(records=[
        {"step": 1, "time": 1.0, "events": [{"type": "x", "data": {"s": "a" * 1000}}]}]),
        raw=b" " * (wire.MAX_FRAME_BYTES + 10))], "oversize"),
    "nesting 9": (lambda: [frame(_nested(9))], "too_deep"),
    "nesting 100000": (lambda: [frame(None, raw=json.dumps(batch_doc()).replace(
        '"loss": 1.5', '"loss": ' + "[" * 100_000 + "1" + "]" * 100_000).encode())],
                       "too_deep"),
    "unknown top field": (lambda: [frame({**batch_doc(), "admin": True})], "bad_schema"),
    "unknown record field": (lambda: [frame(_with(["records", 0, "sql"], "DROP TABLE runs"))],
                             "bad_schema"),
    "unknown type": (lambda: [frame({**batch_doc(), "type": "exec"})], "bad_schema"),
    "ack sent to server": (lambda: [wire.encode(wire.Ack(uuid.uuid4().hex, (1,)))],
                           "bad_schema"),
    "huge histogram": (lambda: [frame(_with(["records", 0, "hists", "grad_hist", "fc1"],
                                            {"lo": 0, "hi": 1, "counts": [1] * 100_000}))],
                       "too_many"),
    "inverted histogram": (lambda: [frame(_with(["records", 0, "hists", "grad_hist", "fc1"],
                                                {"lo": 1, "hi": 0, "counts": [1]}))],
                           "bad_value"),
    "negative count": (lambda: [frame(_with(["records", 0, "hists", "grad_hist", "fc1"],
                                            {"lo": 0, "hi": 1, "counts": [-5]}))], "bad_value"),
    "too many records": (lambda: [frame(batch_doc(records=[
        {"step": i, "time": 1.0} for i in range(wire.MAX_RECORDS + 1)]))], "too_many"),
    "too many layers": (lambda: [frame(_with(["records", 0, "layers", "update_ratio"],
                                             {f"l{i}": 1.0 for i in range(5000)}))],
                        "too_many"),
    "bad metric name": (lambda: [frame(_with(["records", 0, "scalars"],
                                             {'loss"} 1\nevil{': 1.0}))], "bad_name"),
    "bad layer name": (lambda: [frame(_with(["records", 0, "layers", "update_ratio"],
                                            {"../../etc/passwd\n": 1.0}))], "bad_name"),
    "bad run name": (lambda: [frame({**batch_doc(), "run": "run\nname"})], "bad_name"),
    "bad session": (lambda: [frame({**batch_doc(), "session": "'; --"})], "bad_name"),
    "seq zero": (lambda: [frame({**batch_doc(), "seq": 0})], "bad_value"),
    "seq bool": (lambda: [frame({**batch_doc(), "seq": True})], "bad_value"),
    "huge step": (lambda: [frame(_with(["records", 0, "step"], 2**80))], "bad_value"),
    "infinite time": (lambda: [frame(_with(["records", 0, "time"], "inf"))], "bad_value"),
    "string value": (lambda: [frame(_with(["records", 0, "scalars", "loss"], "1e3"))],
                     "bad_value"),
    "long meta string": (lambda: [frame(_hello({"k": "a" * (wire.MAX_STR_LEN + 1)}))],
                         "bad_value"),
    "meta flood": (lambda: [frame(_hello({f"k{i}": i for i in range(wire.MAX_META_KEYS + 1)}))],
                   "too_many"),
    "nested meta": (lambda: [frame(_hello({"k": {"a": 1}}))], "bad_value"),
}


def test_hostile_frames_are_nacked_counted_and_not_stored(
        agent: RawAgent, store: Store, stats: Stats) -> None:
    before = row_counts(store)
    for name, (make, reason) in HOSTILE.items():
        reply = agent.call(*make(), timeout=20)
        assert isinstance(reply, wire.Nack), (name, reply)
        assert reply.reason == reason, (name, reply)
    assert row_counts(store) == before  # nothing malformed stored, not even a run or session
    expected: dict[str, int] = {}
    for _, reason in HOSTILE.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert stats.snapshot().invalid == expected
    assert stats.snapshot().received == {}
    assert_still_serving(agent, store)


def test_frame_beyond_the_socket_limit_drops_only_that_connection(
        collector: Collector, agent: RawAgent, store: Store) -> None:
    assert collector.bound_endpoint is not None
    hostile = RawAgent(collector.bound_endpoint)
    try:
        hostile.send(b"SW\x01\x00" + b" " * (3 << 20))  # > ZMQ_MAXMSGSIZE: disconnected, no reply
        assert hostile.sock.poll(500) == 0
    finally:
        hostile.close()
    assert collector.running
    assert_still_serving(agent, store)


def test_random_frames_through_the_socket(agent: RawAgent, store: Store, stats: Stats) -> None:
    sent = 0

    @given(body=st.binary(max_size=512), version=st.integers(0, 255), flags=st.integers(0, 255),
           magic=st.sampled_from([wire.MAGIC, b"", b"S", b"WS"]))
    @FUZZ
    def fuzz(body: bytes, version: int, flags: int, magic: bytes) -> None:
        nonlocal sent
        reply = agent.call(magic + bytes((version, flags)) + body)
        sent += 1
        assert isinstance(reply, wire.Nack), reply
        assert reply.reason in wire.WireError.REASONS, reply

    fuzz()
    assert sent > 0
    assert sum(stats.snapshot().invalid.values()) == sent
    assert row_counts(store)["runs"] == 0
    assert_still_serving(agent, store)


def _mutate(doc: Any, path: list[int], value: Any, mode: int) -> Any:
    """Replace, or add an unknown key next to, the node `path` picks (indices mod size)."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return value if mode == 0 else doc
    i = path[0] % len(doc)
    if isinstance(doc, dict):
        key = sorted(doc)[i]
        if mode == 1 and len(path) == 1:
            return {**doc, f"unknown_{i}": value}
        return {**doc, key: _mutate(doc[key], path[1:], value, mode)}
    return [*doc[:i], _mutate(doc[i], path[1:], value, mode), *doc[i + 1:]]


def test_mutated_messages_through_the_socket(agent: RawAgent, store: Store) -> None:
    """Valid batches with one node replaced by random JSON or an unknown key added: each is
    either stored whole (acked) or nacked, and whatever was acked reads back."""
    acked = 0

    @given(path=st.lists(st.integers(0, 50), min_size=1, max_size=6), value=json_values,
           mode=st.integers(0, 1), compress=st.booleans())
    @FUZZ
    def fuzz(path: list[int], value: Any, mode: int, compress: bool) -> None:
        nonlocal acked
        doc = _mutate(batch_doc(run="mut"), path, value, mode)
        reply = agent.call(frame(doc, flags=wire.FLAG_ZLIB if compress else 0))
        if isinstance(reply, wire.Nack):
            assert reply.reason in wire.WireError.REASONS
            return
        acked += 1
        msg = wire.decode(frame(doc))  # what the server accepted must be a valid message
        assert isinstance(msg, wire.Batch)
        for r in msg.records:
            for metric, x in r.scalars.items():
                got = [p.value for p in store.series(msg.header.run, metric,
                                                     step_min=r.step, step_max=r.step)]
                assert any(g == x or (math.isnan(g) and math.isnan(x)) for g in got), (
                    metric, x, got)

    fuzz()
    assert_still_serving(agent, store)


# --- the same directly against wire.decode + Store.write ----------------------------------------

names = st.from_regex(wire.METRIC_RE, fullmatch=True)
layer_names = st.from_regex(wire.LAYER_RE, fullmatch=True)
floats = st.floats(allow_nan=True, allow_infinity=True)
records = st.builds(
    wire.Record, step=st.integers(0, 2**62), time=st.floats(0, 2e9),
    scalars=st.dictionaries(names, floats, max_size=5),
    layers=st.dictionaries(names, st.dictionaries(layer_names, floats, max_size=4), max_size=3),
    hists=st.dictionaries(names, st.dictionaries(layer_names, st.builds(
        wire.Histogram, lo=st.just(-1.0), hi=st.just(1.0),
        counts=st.lists(st.integers(0, 2**40), min_size=1, max_size=wire.MAX_BINS).map(tuple),
        nonfinite=st.integers(0, 2**40)), max_size=2), max_size=2),
    events=st.lists(st.builds(wire.Event, type=names, data=st.dictionaries(
        st.from_regex(wire.KEY_RE, fullmatch=True),
        st.none() | st.booleans() | st.integers(-2**62, 2**62) | floats | st.text(max_size=50),
        max_size=4)), max_size=3).map(tuple))


def test_decode_and_store_write_directly(store: Store) -> None:
    """Anything `decode` accepts, `Store.write` stores and reads back; anything else is a
    `WireError` with a known reason, never another exception."""
    session = uuid.uuid4().hex
    seq = 0

    @given(recs=st.lists(records, min_size=1, max_size=4), junk=st.binary(max_size=64),
           cut=st.integers(0, 400))
    @FUZZ
    def fuzz(recs: list[wire.Record], junk: bytes, cut: int) -> None:
        nonlocal seq
        seq += 1
        good = wire.encode(wire.Batch(wire.Header(session, seq, "direct"), tuple(recs)))
        for bad in (good[:cut], good[:cut] + junk + good[cut:], junk):
            try:
                wire.decode(bad)
            except wire.WireError as e:
                assert e.reason in wire.WireError.REASONS
        msg = wire.decode(good)
        assert wire.encode(msg) == good  # decoded exactly what was sent (NaN included)
        assert not store.write(msg).duplicate
        for r in recs:
            for metric, x in r.scalars.items():
                got = [p.value for p in store.series("direct", metric, step_min=r.step,
                                                     step_max=r.step)]
                assert any(g == x or (math.isnan(g) and math.isnan(x)) for g in got)
            for metric, per in r.hists.items():
                stored = {h.layer: h.counts for h in store.histograms(
                    "direct", metric, step_min=r.step, step_max=r.step)}
                for layer, h in per.items():
                    assert stored[layer] == list(h.counts)

    fuzz()


# --- name floods: bounded cardinality -----------------------------------------------------------


def _pipeline(agent: RawAgent, frames: list[bytes]) -> dict[tuple[str, int], wire.Reply]:
    """Send all frames, then read replies until every (session, seq) has one (an ack may
    cover several seqs of one session)."""
    for f in frames:
        agent.send(f)
    out: dict[tuple[str, int], wire.Reply] = {}
    while len(out) < len(frames):
        r = agent.reply(timeout=30)
        for seq in (r.seqs if isinstance(r, wire.Ack) else (r.seq,)):
            out[(r.session, seq)] = r
    assert len(out) == len(frames)
    return out


def test_run_metric_and_layer_floods_are_bounded_and_counted(store: Store, stats: Stats) -> None:
    limits = Limits(max_runs=50, max_metrics_per_run=16, max_layers_per_run=64)
    c = start_collector(store, stats, limits)
    assert c.bound_endpoint is not None
    agent = RawAgent(c.bound_endpoint)
    try:
        # 2000 distinct runs: the first 50 are taken, the rest nacked "too_many"
        docs = [batch_doc(run=f"flood-{i}") for i in range(2000)]
        replies = list(_pipeline(agent, [frame(d) for d in docs]).values())
        assert sum(isinstance(r, wire.Ack) for r in replies) == 50
        assert {r.reason for r in replies if isinstance(r, wire.Nack)} == {"too_many"}
        assert len(store.list_runs()) == 50
        assert stats.snapshot().refused_series == 1950
        assert stats.snapshot().invalid == {"too_many": 1950}
        # 3000 metric names and 5000 layer names in one known run: the first ones are kept
        session = uuid.uuid4().hex
        frames = [frame(batch_doc(run="flood-0", session=session, seq=k + 1, records=[
            {"step": k, "time": 1.0, "scalars": {f"m{k}_{j}": 1.0 for j in range(100)},
             "layers": {"update_ratio": {f"layer.{k}.{j}": 1.0 for j in range(500)}}}]))
            for k in range(30)]
        acks = _pipeline(agent, frames)
        assert all(isinstance(r, wire.Ack) for r in acks.values()), acks
        # flood-0 already had 3 metrics (loss, update_ratio, grad_hist) and 1 layer (fc1)
        metrics = store.metrics("flood-0")
        assert len(metrics) == 16
        assert {"loss", "update_ratio", "grad_hist"} <= set(metrics)
        assert set(metrics) - {"loss", "update_ratio", "grad_hist"} == {
            f"m0_{j}" for j in range(13)}
        with store.connection() as conn:
            layers = conn.exec_driver_sql(
                "SELECT COUNT(DISTINCT layer) FROM layer_values l JOIN runs r ON r.id = l.run_id"
                " WHERE r.name = 'flood-0'").scalar_one()
        assert layers == 64
        refused = stats.snapshot().refused_series - 1950
        assert refused == (3000 - 13) + (30 * 500 - 63)
        assert_still_serving(agent, store, run="flood-1")
    finally:
        agent.close()
        c.stop()


def test_cardinality_global_name_budget() -> None:
    stats = Stats()
    card = Cardinality(Limits(max_runs=10, max_metrics_per_run=100, max_layers_per_run=100,
                              max_names=30), stats)
    admitted = 0
    for i in range(10):
        h = wire.Header(uuid.uuid4().hex, 1, f"r{i}")
        msg = card.admit(wire.Batch(h, (wire.Record(1, 1.0, {f"m{j}": 1.0 for j in range(10)}),)))
        assert isinstance(msg, wire.Batch)
        admitted += len(msg.records[0].scalars)
    assert admitted == 30
    assert stats.snapshot().refused_series == 70
    with pytest.raises(wire.WireError) as e:
        card.admit(wire.Hello(wire.Header(uuid.uuid4().hex, 1, "r10"), {}))
    assert e.value.reason == "too_many"


def test_exposition_stays_bounded_under_a_run_flood(store: Store, stats: Stats) -> None:
    """1000 active runs (under the ingest limit) still give at most DEFAULT_MAX_RUNS runs in
    /metrics; the rest are counted as refused series."""
    c = start_collector(store, stats)
    assert c.bound_endpoint is not None
    agent = RawAgent(c.bound_endpoint)
    try:
        docs = [batch_doc(run=f"r{i:04d}", records=[
            {"step": 1, "time": time.time(),
             "scalars": {m: 1.0 for m in list(EXPORTED)[:8]} | {"loss": 2.0}}])
            for i in range(1000)]
        replies = _pipeline(agent, [frame(d) for d in docs]).values()
        assert all(isinstance(r, wire.Ack) for r in replies)
    finally:
        agent.close()
        c.stop()
    text = generate_latest(build_registry(StoreExportSource(store, stats))).decode()
    runs = {ln.split('run="', 1)[1].split('"', 1)[0] for ln in text.splitlines()
            if 'run="' in ln and not ln.startswith("#")}
    assert len(runs) == DEFAULT_MAX_RUNS
    per_run_lines = sum(1 for ln in text.splitlines() if 'run="' in ln)
    assert per_run_lines <= DEFAULT_MAX_RUNS * (len(EXPORTED) + 2)
    refused = [ln for ln in text.splitlines() if ln.startswith("spikewatch_refused_series_total")]
    assert refused
    assert float(refused[0].split()[-1]) == 800 * (len(EXPORTED) + 2)
    assert len(text) < 2_000_000


def test_a_large_compressed_batch_is_still_accepted() -> None:
    """A legitimately compressed large batch is still accepted (the limits are not too tight)."""
    doc = batch_doc(records=[{"step": i, "time": 1.0, "scalars": {"loss": float(i)}}
                             for i in range(wire.MAX_RECORDS)])
    raw = json.dumps(doc).encode()
    assert len(raw) > wire.COMPRESS_ABOVE
    msg = wire.decode(wire.MAGIC + bytes((wire.VERSION, wire.FLAG_ZLIB)) + zlib.compress(raw))
    assert isinstance(msg, wire.Batch)
    assert len(msg.records) == wire.MAX_RECORDS


def test_cardinality_frees_the_places_of_deleted_runs_without_a_restart() -> None:
    stored = {"a", "b"}
    now = [0.0]
    card = Cardinality(Limits(max_runs=2), Stats(), lambda: sorted(stored), lambda: now[0])

    def hello(run: str) -> wire.Hello:
        return wire.Hello(wire.Header(uuid.uuid4().hex, 1, run), {})

    with pytest.raises(wire.WireError):
        card.admit(hello("c"))  # the limit: two stored runs
    stored.discard("a")  # `spikewatch runs delete a`, on the database or through the API
    with pytest.raises(wire.WireError):
        card.admit(hello("c"))  # the stored runs are read again at most every RESYNC_S
    now[0] += RESYNC_S
    assert isinstance(card.admit(hello("c")), wire.Hello)
    assert isinstance(card.admit(hello("b")), wire.Hello)  # a kept run is still known
