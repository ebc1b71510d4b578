"""A small real ZeroMQ ROUTER peer that stands in for the server's collector in agent tests.

It decodes every frame with `spikewatch.protocol.wire` (the same validation the server runs),
records what it received, duplicates included, and replies Ack, or Nack for frames that fail
validation. Switches let a test make it go silent, drop the first acks, stop and start again on
the same port, or speak CURVE.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import zmq

from spikewatch.protocol import wire


class Peer:
    """A ROUTER on 127.0.0.1 running in its own thread; every wait is bounded."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:0", *,
                 curve_secret_key: bytes | None = None) -> None:
        self.endpoint = endpoint
        self.curve_secret_key = curve_secret_key
        self.silent = False  # receive and record, never reply
        self.drop_acks = 0  # do not acknowledge the next N valid messages
        self.received: list[wire.Message] = []  # every valid message, duplicates included
        self.invalid: list[str] = []  # WireError reasons of rejected frames
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Peer:
        """Bind (the first time on a free port, later on the same one) and serve."""
        assert self._thread is None, "already running"
        self._stop.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._serve, name="test-peer", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("peer did not bind within 10 s")
        if self._error is not None:
            raise RuntimeError("peer failed to bind") from self._error
        return self

    def stop(self) -> None:
        """Close the socket (unacknowledged frames are lost, as in a crash)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(10)
            assert not self._thread.is_alive(), "peer thread did not stop"
            self._thread = None

    def __enter__(self) -> Peer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            if self.curve_secret_key is not None:
                sock.setsockopt(zmq.CURVE_SERVER, 1)
                sock.setsockopt(zmq.CURVE_SECRETKEY, self.curve_secret_key)
            sock.bind(self.endpoint)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException as e:
            self._error = e
            sock.close(0)
            ctx.term()
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not sock.poll(20):
                    continue
                ident, *rest = sock.recv_multipart()
                reply = self._handle(rest[-1] if rest else b"")
                if reply is not None:
                    with contextlib.suppress(zmq.ZMQError):
                        sock.send_multipart([ident, wire.encode(reply)], zmq.NOBLOCK)
        finally:
            sock.close(0)
            ctx.term()

    def _handle(self, frame: bytes) -> wire.Reply | None:
        try:
            msg = wire.decode(frame)
        except wire.WireError as e:
            with self._lock:
                self.invalid.append(e.reason)
            ident = _lenient_ident(frame)
            if ident is None or self.silent:
                return None
            return wire.Nack(ident[0], ident[1], e.reason)
        with self._lock:
            self.received.append(msg)
            if self.silent:
                return None
            if self.drop_acks > 0:
                self.drop_acks -= 1
                return None
        return wire.Ack(msg.header.session, (msg.header.seq,))

    # --- inspection ----------------------------------------------------------------------------

    def messages(self, session: str | None = None) -> list[wire.Message]:
        """Received messages (duplicates included), optionally of one session."""
        with self._lock:
            return [m for m in self.received if session is None or m.header.session == session]

    def first_seen(self, session: str | None = None) -> list[wire.Message]:
        """Each distinct (session, seq) once, in the order it first arrived."""
        seen: set[tuple[str, int]] = set()
        out = []
        for m in self.messages(session):
            key = (m.header.session, m.header.seq)
            if key not in seen:
                seen.add(key)
                out.append(m)
        return out

    def seqs(self, session: str) -> list[int]:
        """Distinct seqs of a session in first-arrival order."""
        return [m.header.seq for m in self.first_seen(session)]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Poll `predicate` until true or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()


def _lenient_ident(frame: bytes) -> tuple[str, int] | None:
    """Session and seq of a frame that failed validation, if they can be read at all."""
    try:
        body = frame[wire.HEADER_LEN:]
        if frame[3] & wire.FLAG_ZLIB:
            body = zlib.decompressobj().decompress(body, wire.MAX_BODY_BYTES)
        doc: Any = json.loads(body)
        session, seq = doc["session"], doc["seq"]
        if wire.SESSION_RE.match(session) and isinstance(seq, int) and seq >= 1:
            return session, seq
    except Exception:
        return None
    return None


def free_endpoint() -> str:
    """A tcp endpoint on 127.0.0.1 that nothing listens on (bound once, then released)."""
    peer = Peer().start()
    peer.stop()
    return peer.endpoint
