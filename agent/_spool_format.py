"""The spool's bytes: segment files of CRC-checked entries, each a frame exactly as first encoded.

A segment starts with `SEG_MAGIC` followed by entries ``<length u32><crc32 u32><priority u8>
<seq u64><frame>``, the CRC covering priority, seq and frame. Nothing is ever rewritten, so a
torn write can only cut the last entry short, and a CRC check finds it.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Final

SEG_MAGIC: Final = b"SWSPOOL1"
ENTRY_HEADER: Final = struct.Struct("<IIBQ")  # length, crc32, priority, seq
_CRC_PART: Final = struct.Struct("<BQ")
MAX_ENTRY_BYTES: Final = 64 << 20


def _crc(prio: int, seq: int, frame: bytes) -> int:
    return zlib.crc32(frame, zlib.crc32(_CRC_PART.pack(prio, seq))) & 0xFFFFFFFF


def pack_entry(prio: int, seq: int, frame: bytes) -> bytes:
    """One entry's bytes: header, then the frame."""
    return ENTRY_HEADER.pack(len(frame), _crc(prio, seq, frame), prio, seq) + frame


def verified_frame(raw: bytes, seq: int) -> bytes | None:
    """The frame of one entry's bytes if intact and numbered `seq`, else None.

    Raises struct.error if `raw` is shorter than an entry header.
    """
    length, crc, prio, got_seq = ENTRY_HEADER.unpack_from(raw, 0)
    frame = raw[ENTRY_HEADER.size:]
    if len(frame) == length and got_seq == seq and _crc(prio, got_seq, frame) == crc:
        return frame
    return None


def parse_segment(data: bytes, prio: int) -> tuple[list[tuple[int, int, int]], bool]:
    """The entries of a segment file's bytes as (offset, length, seq), up to the first torn or
    corrupt one (or one of another priority); and whether the whole segment was intact."""
    pos = len(SEG_MAGIC)
    if data[:pos] != SEG_MAGIC:
        return [], False
    entries: list[tuple[int, int, int]] = []
    while pos < len(data):
        if pos + ENTRY_HEADER.size > len(data):
            return entries, False
        length, crc, got_prio, seq = ENTRY_HEADER.unpack_from(data, pos)
        end = pos + ENTRY_HEADER.size + length
        if (end > len(data) or got_prio != prio
                or _crc(got_prio, seq, data[pos + ENTRY_HEADER.size:end]) != crc):
            return entries, False
        entries.append((pos, end - pos, seq))
        pos = end
    return entries, True


def write_all(fd: int, data: bytes) -> None:
    """`os.write` until every byte is written."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
