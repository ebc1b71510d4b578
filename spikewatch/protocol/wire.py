"""The wire format between agent and server, defined once. Importable without torch.

A frame is a 4-byte header followed by a JSON document (`spikewatch.protocol.envelope`: header,
compression, size and nesting limits; re-exported here).

JSON was chosen over a binary codec so the format is inspectable and needs no extra dependency;
there is no pickle anywhere. JSON has no NaN/Inf, so non-finite floats travel explicitly as the
strings "nan", "inf" and "-inf" (`spikewatch.protocol.nonfinite`'s wire spelling) and come back as
floats: a blow-up is data, never silently lost.

Messages (agent → server): ``hello`` (run metadata) and ``batch`` (records), both carrying the agent
session id and a per-session sequence number starting at 1, so the server can deduplicate resent
messages and acknowledge each one after a durable write. Replies (server → agent): ``ack`` for
stored messages, ``nack`` for messages that will never be accepted (the agent must drop them) and
``alert`` when an alert on the agent's run starts or stops firing. A reply of a type the agent
does not know fails with reason ``unknown_type``, which an agent skips (a newer server's).

`decode` validates everything against fixed limits and raises `WireError` with a short, bounded
`reason` code (usable as a metric label); nothing unvalidated reaches the store.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from spikewatch.protocol.envelope import (
    COMPRESS_ABOVE,
    FLAG_ZLIB,
    HEADER_LEN,
    MAGIC,
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MAX_FRAME_BYTES,
    VERSION,
    WireError,
    pack,
    unpack,
)
from spikewatch.protocol.messages import (
    Ack,
    Alert,
    Batch,
    Event,
    Header,
    Hello,
    Histogram,
    Message,
    Nack,
    Partial,
    Record,
    Reply,
    Scalar,
)
from spikewatch.protocol.names import Combine
from spikewatch.protocol.nonfinite import WIRE_NAMES, from_wire, to_wire

__all__ = ["COMPRESS_ABOVE", "FLAG_ZLIB", "HEADER_LEN", "MAGIC", "MAX_BODY_BYTES", "MAX_DEPTH",
           "MAX_FRAME_BYTES", "VERSION", "Ack", "Alert", "Batch", "Event", "Header", "Hello",
           "Histogram", "Message", "Nack", "Partial", "Record", "Reply", "Scalar", "WireError",
           "decode", "decode_reply", "encode", "message_id"]

# Limits of the document: anything beyond them is rejected whole (the frame's: `envelope`).
MAX_RECORDS: Final = 1024
MAX_METRICS_PER_RECORD: Final = 256
MAX_LAYERS_PER_METRIC: Final = 4096
MAX_BINS: Final = 512
MAX_EVENTS_PER_RECORD: Final = 64
MAX_META_KEYS: Final = 256
MAX_STR_LEN: Final = 1024

METRIC_RE: Final = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
LAYER_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/\-\[\]]{0,127}$")
RUN_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}$")
SESSION_RE: Final = re.compile(r"^[0-9a-f]{32}$")
KEY_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
RULE_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
ALERT_SEVERITIES: Final = frozenset({"page", "warning", "info"})
ALERT_STATES: Final = frozenset({"firing", "resolved"})


# --- encoding ----------------------------------------------------------------------------------


def _num(x: float) -> float | str:
    return to_wire(float(x))


def _scalar_out(x: Scalar) -> Any:
    if isinstance(x, float):
        return _num(x)
    return x


def _header_out(h: Header) -> dict[str, Any]:
    return {"session": h.session, "seq": h.seq, "run": h.run, "rank": h.rank,
            "world_size": h.world_size, "sent_at": _num(h.sent_at)}


def _record_out(r: Record) -> dict[str, Any]:
    out: dict[str, Any] = {"step": r.step, "time": _num(r.time)}
    if r.scalars:
        out["scalars"] = {k: _num(v) for k, v in r.scalars.items()}
    if r.layers:
        out["layers"] = {k: {n: _num(v) for n, v in d.items()} for k, d in r.layers.items()}
    if r.hists:
        out["hists"] = {
            k: {n: {"lo": _num(h.lo), "hi": _num(h.hi), "counts": list(h.counts),
                    "nonfinite": h.nonfinite} for n, h in d.items()}
            for k, d in r.hists.items()
        }
    if r.partials:
        out["partials"] = {k: {"op": p.op.value, "num": _num(p.num), "den": _num(p.den)}
                           for k, p in r.partials.items()}
    if r.events:
        out["events"] = [{"type": e.type, "data": {k: _scalar_out(v) for k, v in e.data.items()}}
                         for e in r.events]
    return out


def encode(msg: Message | Reply) -> bytes:
    """Serialise a message or reply to one frame. Raises ValueError if it would exceed limits."""
    doc: dict[str, Any]
    if isinstance(msg, Hello):
        doc = {"type": "hello", **_header_out(msg.header),
               "meta": {k: _scalar_out(v) for k, v in msg.meta.items()}}
    elif isinstance(msg, Batch):
        doc = {"type": "batch", **_header_out(msg.header),
               "records": [_record_out(r) for r in msg.records]}
    elif isinstance(msg, Ack):
        doc = {"type": "ack", "session": msg.session, "seqs": list(msg.seqs)}
    elif isinstance(msg, Alert):
        doc = {"type": "alert", "session": msg.session, "run": msg.run, "rule": msg.rule,
               "severity": msg.severity, "state": msg.state, "step": msg.step,
               "value": _num(msg.value), "summary": msg.summary[:MAX_STR_LEN]}
    else:
        doc = {"type": "nack", "session": msg.session, "seq": msg.seq, "reason": msg.reason}
    frame = pack(doc)
    if len(frame) > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    return frame


# --- decoding and validation -------------------------------------------------------------------


def _obj(
    x: Any, what: str, required: set[str], optional: frozenset[str] | set[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(x, dict):
        raise WireError("bad_schema", f"{what} must be an object")
    keys = set(x)
    if missing := required - keys:
        raise WireError("bad_schema", f"{what} lacks {sorted(missing)}")
    if unknown := keys - required - optional:
        raise WireError("bad_schema", f"{what} has unknown fields {sorted(unknown)[:5]}")
    return x


def _int(x: Any, what: str, lo: int = 0, hi: int = 2**62) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
        raise WireError("bad_value", f"{what} must be an integer in [{lo}, {hi}]")
    return x


def _float(x: Any, what: str) -> float:
    if isinstance(x, bool):
        raise WireError("bad_value", f"{what} must be a number")
    if isinstance(x, int | float):
        return float(x)
    if isinstance(x, str) and (value := from_wire(x)) is not None:
        return value
    raise WireError("bad_value", f"{what} must be a number or {'/'.join(map(repr, WIRE_NAMES))}")


def _name(x: Any, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(x, str) or not pattern.match(x):
        raise WireError("bad_name", f"{what} {str(x)[:80]!r} does not match {pattern.pattern}")
    return x


def _bounded(d: Any, limit: int, what: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise WireError("bad_schema", f"{what} must be an object")
    if len(d) > limit:
        raise WireError("too_many", f"{what} has {len(d)} entries (limit {limit})")
    return d


def _scalar_in(x: Any, what: str) -> Scalar:
    if x is None or isinstance(x, bool | int):
        return x
    if isinstance(x, float):
        return x
    if isinstance(x, str):
        if (value := from_wire(x)) is not None:
            return value
        if len(x) > MAX_STR_LEN:
            raise WireError("bad_value", f"{what} longer than {MAX_STR_LEN}")
        return x
    raise WireError("bad_value", f"{what} must be a scalar")


def _header_in(d: dict[str, Any]) -> Header:
    h = Header(
        session=_name(d["session"], SESSION_RE, "session"),
        seq=_int(d["seq"], "seq", lo=1),
        run=_name(d["run"], RUN_RE, "run"),
        rank=_int(d["rank"], "rank", hi=1 << 20),
        world_size=_int(d["world_size"], "world_size", lo=1, hi=1 << 20),
        sent_at=_float(d["sent_at"], "sent_at"),
    )
    if h.rank >= h.world_size:
        raise WireError("bad_value", f"rank {h.rank} is not below world_size {h.world_size}")
    return h


def _hist_in(x: Any, what: str) -> Histogram:
    d = _obj(x, what, {"lo", "hi", "counts"}, {"nonfinite"})
    counts = d["counts"]
    if not isinstance(counts, list) or not 1 <= len(counts) <= MAX_BINS:
        raise WireError("too_many" if isinstance(counts, list) else "bad_schema",
                        f"{what}.counts must be a list of 1..{MAX_BINS} integers")
    lo, hi = _float(d["lo"], f"{what}.lo"), _float(d["hi"], f"{what}.hi")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise WireError("bad_value", f"{what} needs finite lo < hi")
    return Histogram(lo, hi, tuple(_int(c, f"{what}.counts") for c in counts),
                     _int(d.get("nonfinite", 0), f"{what}.nonfinite"))


def _record_in(x: Any, i: int) -> Record:
    w = f"records[{i}]"
    d = _obj(x, w, {"step", "time"}, {"scalars", "layers", "hists", "partials", "events"})
    raw_scalars = _bounded(d.get("scalars", {}), MAX_METRICS_PER_RECORD, "scalars")
    scalars = {_name(k, METRIC_RE, "metric"): _float(v, f"{w}.scalars.{k}")
               for k, v in raw_scalars.items()}
    layers = {
        _name(k, METRIC_RE, "metric"): {
            _name(n, LAYER_RE, "layer"): _float(v, f"{w}.layers.{k}")
            for n, v in _bounded(per, MAX_LAYERS_PER_METRIC, f"layers.{k}").items()
        }
        for k, per in _bounded(d.get("layers", {}), MAX_METRICS_PER_RECORD, "layers").items()
    }
    hists = {
        _name(k, METRIC_RE, "metric"): {
            _name(n, LAYER_RE, "layer"): _hist_in(h, f"{w}.hists.{k}")
            for n, h in _bounded(per, MAX_LAYERS_PER_METRIC, f"hists.{k}").items()
        }
        for k, per in _bounded(d.get("hists", {}), MAX_METRICS_PER_RECORD, "hists").items()
    }
    partials: dict[str, Partial] = {}
    for k, p in _bounded(d.get("partials", {}), MAX_METRICS_PER_RECORD, "partials").items():
        pd = _obj(p, f"{w}.partials", {"op", "num"}, {"den"})
        try:
            op = Combine(pd["op"])
        except ValueError:
            raise WireError("bad_value", f"unknown combine op {str(pd['op'])[:20]!r}") from None
        partials[_name(k, METRIC_RE, "metric")] = Partial(
            op, _float(pd["num"], "num"), _float(pd.get("den", 1.0), "den"))
    raw_events = d.get("events", [])
    if not isinstance(raw_events, list) or len(raw_events) > MAX_EVENTS_PER_RECORD:
        raise WireError("too_many", f"{w}.events must be a list of ≤ {MAX_EVENTS_PER_RECORD}")
    events = []
    for e in raw_events:
        ed = _obj(e, f"{w}.events", {"type"}, {"data"})
        data = _bounded(ed.get("data", {}), MAX_META_KEYS, "event data")
        events.append(Event(_name(ed["type"], METRIC_RE, "event type"),
                            {_name(k, KEY_RE, "key"): _scalar_in(v, k) for k, v in data.items()}))
    return Record(_int(d["step"], f"{w}.step"), _float(d["time"], f"{w}.time"),
                  scalars, layers, hists, partials, tuple(events))


_HEADER_KEYS = {"type", "session", "seq", "run", "rank", "world_size", "sent_at"}


def decode(frame: bytes) -> Message:
    """Validate and parse an agent → server frame. Raises `WireError`."""
    doc = unpack(frame)
    if not isinstance(doc, dict) or doc.get("type") not in ("hello", "batch"):
        raise WireError("bad_schema", "expected a hello or batch object")
    if doc["type"] == "hello":
        d = _obj(doc, "hello", _HEADER_KEYS | {"meta"})
        meta = {_name(k, KEY_RE, "meta key"): _scalar_in(v, k)
                for k, v in _bounded(d["meta"], MAX_META_KEYS, "meta").items()}
        return Hello(_header_in(d), meta)
    d = _obj(doc, "batch", _HEADER_KEYS | {"records"})
    recs = d["records"]
    if not isinstance(recs, list) or len(recs) > MAX_RECORDS:
        raise WireError("too_many", f"records must be a list of ≤ {MAX_RECORDS}")
    return Batch(_header_in(d), tuple(_record_in(r, i) for i, r in enumerate(recs)))


def decode_reply(frame: bytes) -> Reply:
    """Parse a server → agent reply. Raises `WireError`."""
    doc = unpack(frame)
    if not isinstance(doc, dict):
        raise WireError("bad_schema", "reply must be an object")
    if doc.get("type") == "ack":
        d = _obj(doc, "ack", {"type", "session", "seqs"})
        if not isinstance(d["seqs"], list) or len(d["seqs"]) > 4096:
            raise WireError("bad_schema", "ack.seqs must be a list")
        return Ack(_name(d["session"], SESSION_RE, "session"),
                   tuple(_int(s, "seq", lo=1) for s in d["seqs"]))
    if doc.get("type") == "nack":
        d = _obj(doc, "nack", {"type", "session", "seq", "reason"})
        reason = d["reason"] if isinstance(d["reason"], str) else "unknown"
        return Nack(_name(d["session"], SESSION_RE, "session"), _int(d["seq"], "seq", lo=1),
                    reason[:200])
    if doc.get("type") == "alert":
        d = _obj(doc, "alert", set(Alert.__dataclass_fields__))
        if d["severity"] not in ALERT_SEVERITIES or d["state"] not in ALERT_STATES:
            raise WireError("bad_value", "alert severity or state out of its set")
        if not isinstance(d["summary"], str):
            raise WireError("bad_value", "alert.summary must be a string")
        return Alert(_name(d["session"], SESSION_RE, "session"), _name(d["run"], RUN_RE, "run"),
                     _name(d["rule"], RULE_RE, "rule"), d["severity"], d["state"],
                     _int(d["step"], "step"), _float(d["value"], "value"),
                     d["summary"][:MAX_STR_LEN])
    raise WireError("unknown_type", f"reply type {str(doc.get('type'))[:40]!r}")


def message_id(frame: bytes) -> tuple[str, int] | None:
    """Best-effort (session, seq) of a frame that failed validation, for its nack; None when
    the frame does not carry a readable one."""
    try:
        doc = unpack(frame)
        session, seq = doc["session"], doc["seq"]
    except (WireError, TypeError, KeyError, IndexError):
        return None
    if (isinstance(session, str) and SESSION_RE.match(session)
            and isinstance(seq, int) and not isinstance(seq, bool) and 1 <= seq <= 2**62):
        return session, seq
    return None
