"""Helpers of the ingest fuzz tests: a real collector on a real store, and a raw ZeroMQ agent."""

from __future__ import annotations

import json
import time
import uuid
import zlib
from typing import Any

import zmq

from spikewatch.protocol import wire


def batch_doc(run: str = "fuzz", seq: int = 1, session: str | None = None,
              records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A valid batch document (as JSON would carry it), ready to be mutated."""
    return {"type": "batch", "session": session or uuid.uuid4().hex, "seq": seq, "run": run,
            "rank": 0, "world_size": 1, "sent_at": time.time(),
            "records": records if records is not None else [
                {"step": 1, "time": time.time(), "scalars": {"loss": 1.5},
                 "layers": {"update_ratio": {"fc1": 0.01}},
                 "hists": {"grad_hist": {"fc1": {"lo": -1.0, "hi": 1.0, "counts": [1, 2, 3]}}}}]}


def frame(doc: Any, *, version: int = wire.VERSION, flags: int = 0, raw: bytes | None = None
          ) -> bytes:
    """A frame around `doc` (or around `raw` body bytes), compressed when flags ask for it."""
    body = raw if raw is not None else json.dumps(doc, separators=(",", ":")).encode()
    if flags & wire.FLAG_ZLIB:
        body = zlib.compress(body)
    return wire.MAGIC + bytes((version, flags)) + body


class RawAgent:
    """A DEALER socket sending frames exactly as given and reading the replies."""

    def __init__(self, endpoint: str) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, *parts: bytes) -> None:
        self.sock.send_multipart(list(parts))

    def reply(self, timeout: float = 10.0) -> wire.Ack | wire.Nack:
        """The next answer to a frame (alert replies, a rule's verdict, are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            assert self.sock.poll(int(left * 1000)), "no reply from the collector"
            r = wire.decode_reply(self.sock.recv())
            if not isinstance(r, wire.Alert):
                return r

    def call(self, *parts: bytes, timeout: float = 10.0) -> wire.Reply:
        self.send(*parts)
        return self.reply(timeout)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()
