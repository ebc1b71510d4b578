"""The frame envelope: a 4-byte header, an optional zlib body, size and nesting limits.

    b"SW" | version (1 byte) | flags (1 byte, bit 0 = zlib-compressed body) | JSON document

`pack` makes a frame of a JSON document and `unpack` checks a frame's header, compression, size
and nesting before the JSON parser sees it, raising `WireError` (reason codes in parentheses
below). What the document may hold is `spikewatch.protocol.wire`'s business.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Final

__all__ = ["COMPRESS_ABOVE", "FLAG_ZLIB", "HEADER_LEN", "MAGIC", "MAX_BODY_BYTES", "MAX_DEPTH",
           "MAX_FRAME_BYTES", "VERSION", "WireError", "pack", "unpack"]

VERSION: Final = 1
MAGIC: Final = b"SW"
FLAG_ZLIB: Final = 0x01
HEADER_LEN: Final = 4
COMPRESS_ABOVE: Final = 4096  # bytes of JSON above which the agent compresses

# Limits: anything beyond them is rejected whole (reason codes in parentheses).
MAX_FRAME_BYTES: Final = 1 << 20  # compressed frame ("oversize")
MAX_BODY_BYTES: Final = 8 << 20  # decompressed body ("oversize")
MAX_DEPTH: Final = 8  # JSON nesting ("too_deep")


class WireError(ValueError):
    """A frame that cannot be accepted. `reason` is a short code from a fixed set."""

    REASONS: Final = frozenset(
        {"bad_header", "bad_version", "oversize", "bad_compression", "bad_json", "too_deep",
         "bad_schema", "bad_name", "too_many", "bad_value", "unknown_type"}
    )

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in self.REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def pack(doc: dict[str, Any]) -> bytes:
    """One frame of the JSON document: compressed above COMPRESS_ABOVE bytes."""
    body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if len(body) > COMPRESS_ABOVE:
        return MAGIC + bytes((VERSION, FLAG_ZLIB)) + zlib.compress(body, 1)
    return MAGIC + bytes((VERSION, 0)) + body


def _reject_constant(name: str) -> float:
    raise WireError("bad_value", f"bare {name} is not allowed; use the string form")


def unpack(frame: bytes) -> Any:
    """The JSON document of a frame, every envelope limit checked (`WireError` otherwise)."""
    if len(frame) > MAX_FRAME_BYTES:
        raise WireError("oversize", f"frame of {len(frame)} bytes")
    if len(frame) < HEADER_LEN or frame[:2] != MAGIC:
        raise WireError("bad_header", "missing SW magic")
    if frame[2] != VERSION:
        raise WireError("bad_version", f"version {frame[2]} (this side speaks {VERSION})")
    flags, raw = frame[3], frame[HEADER_LEN:]
    if flags & ~FLAG_ZLIB:
        raise WireError("bad_header", f"unknown flags {flags:#x}")
    if flags & FLAG_ZLIB:
        d = zlib.decompressobj()
        try:
            raw = d.decompress(raw, MAX_BODY_BYTES)
        except zlib.error as e:
            raise WireError("bad_compression", str(e)) from None
        if d.unconsumed_tail or not d.eof:
            raise WireError("oversize" if d.unconsumed_tail else "bad_compression",
                            "body too large or truncated")
    if len(raw) > MAX_BODY_BYTES:
        raise WireError("oversize", f"body of {len(raw)} bytes")
    _check_depth(raw)
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WireError("bad_json", str(e)[:200]) from None


def _check_depth(raw: bytes) -> None:
    """Reject deep nesting before the JSON parser recurses into it."""
    depth = 0
    in_str = esc = False
    for b in raw:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_DEPTH:
                raise WireError("too_deep", f"nesting deeper than {MAX_DEPTH}")
        elif b in (0x5D, 0x7D):
            depth -= 1
