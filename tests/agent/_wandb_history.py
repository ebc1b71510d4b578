"""The history rows of an offline W&B run, read from its `run-<id>.wandb` file.

wandb no longer ships a Python reader of its transaction log, so this reads the format itself:
a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then LevelDB-log blocks of 32 KiB, each record
a CRC32 (4 bytes), a length (2), a type (1: full, 2: first, 3: middle, 4: last) and its bytes; a
whole record is one `wandb_internal_pb2.Record`, whose `history` holds a logged row. The wandb
service may still be writing the file when `run.finish()` returns: the rows are read once the log
holds the run's `exit` record.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

_HEADER = 7
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(data: bytes) -> list[bytes]:
    assert data[:4] == b":W&B", "not a W&B transaction log"
    out: list[bytes] = []
    pos, parts = _HEADER, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # the block's tail is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding
            pos += _BLOCK - pos % _BLOCK
            continue
        if pos + 7 + length > len(data):  # still being written
            break
        body = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(bytes([kind]) + body) & 0xFFFFFFFF == crc, f"bad CRC at {pos}"
        pos += 7 + length
        if kind == _FULL:
            out.append(body)
        elif kind == _FIRST:
            parts = body
        elif kind == _MIDDLE:
            parts += body
        elif kind == _LAST:
            out.append(parts + body)
    return out


def _value(item: Any) -> Any:
    kind = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if kind and kind != "value_json":
        return getattr(item, kind)
    return json.loads(item.value_json)


def history(run_dir: Path, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every history row of the finished offline run in `run_dir` (`.../wandb/offline-run-*`)."""
    (path,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = []
        for raw in _records(path.read_bytes()):
            rec = pb.Record()  # type: ignore[attr-defined]  # (generated, unannotated)
            rec.ParseFromString(raw)
            records.append(rec)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s"
        time.sleep(0.1)
    return [{"/".join(i.nested_key) if i.nested_key else i.key: _value(i)
             for i in r.history.item} for r in records if r.WhichOneof("record_type") == "history"]
