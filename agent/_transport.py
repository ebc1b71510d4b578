"""The agent's transport: acknowledged, ordered delivery over ZeroMQ that never blocks training.

The training thread only appends to a bounded in-memory queue (`submit` never blocks, never
raises; a few microseconds, no syscall while the sender is busy). One sender thread, at a lower OS
priority, owns the DEALER socket (pyzmq sockets are not thread-safe): it encodes queued messages
with the next sequence number of this session (a batch too large for one frame is split, a single
oversize record dropped and counted), sends up to `max_queue` of them unacknowledged, re-sends
after `resend_after` seconds (doubling up to `MAX_BACKOFF`), and forgets what the server acks
(stored durably) or nacks (will never store: counted `rejected`). Duplicates are harmless: the
server deduplicates by (session, seq).

While the server is away (a send cannot be queued because no peer is connected, or nothing has
been acked for ``2 * resend_after`` while messages wait), the transport is *offline*: everything
unacknowledged, and everything submitted meanwhile, goes to the spool (`agent._spool`), on disk
when a `spool_dir` is given (it survives a restart: a later transport on the same directory
replays it) or else in memory. The sender probes with the oldest spooled message; when the server
answers, the spool is replayed in order (oldest session first, then by seq) before live data.
More than `max_queue` unacknowledged messages also overflow to the spool. A full queue or spool
drops the lowest priority first (0 diagnostics < 1 signals < 2 events/hello), counted `dropped`.

ZeroMQ options: finite LINGER, SNDHWM/RCVHWM, non-blocking sends with IMMEDIATE (no queueing
toward an absent server), RECONNECT_IVL(_MAX), heartbeats (a hung server is dropped in ~3 s),
MAXMSGSIZE on replies, and CURVE when `server_public_key` is given (the server authenticates the
client key with ZAP; without client keys an ephemeral pair is used, encrypted but not allowed by
an allow-list).

Fork safety: a forked child (e.g. a DataLoader worker) must never touch the parent's ZeroMQ
context or socket, so `os.register_at_fork` disables every transport in the child: `submit` and
`hello` return False and count `dropped`, `close` does nothing. Only the parent streams.

`close()` and interpreter exit (atexit) are bounded by their timeout even with no server. Until
shortly before it, close keeps delivering: the last batches, the spool's backlog (replayed), and
while offline it keeps probing, so a server that is restarting can still take them. What is not
acknowledged by then is spooled (and logged: on disk, the next transport on the same `spool_dir`
replays it; in memory it is lost and counted `dropped`), the socket closes with a finite LINGER.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import zmq

from spikewatch.agent._counters import TransportCounters
from spikewatch.agent._transport_queue import PriorityDropQueue
from spikewatch.agent._transport_sender import HelloItem, Item, Sender
from spikewatch.protocol import wire

__all__ = ["PRIORITY_DIAGNOSTICS", "PRIORITY_EVENTS", "PRIORITY_SIGNALS", "Transport",
           "TransportCounters"]

log = logging.getLogger("spikewatch.agent.transport")

PRIORITY_DIAGNOSTICS: Final = 0
PRIORITY_SIGNALS: Final = 1
PRIORITY_EVENTS: Final = 2  # hello uses this too

_LIVE: weakref.WeakSet[Transport] = weakref.WeakSet()
_ORPHANED: list[Any] = []  # a forked child keeps the parent's zmq objects alive, untouched


class Transport:
    """Acknowledged, spooled delivery of hello and batch messages to the server."""

    def __init__(self, endpoint: str, *, run: str, rank: int = 0, world_size: int = 1,
                 spool_dir: str | os.PathLike[str] | None = None, max_queue: int = 256,
                 max_spool_bytes: int = 256 << 20, resend_after: float = 2.0,
                 linger_ms: int = 200, server_public_key: bytes | str | None = None,
                 client_secret_key: bytes | str | None = None,
                 client_public_key: bytes | str | None = None) -> None:
        """Connect (lazily, in the background) and start the sender thread.

        Raises ValueError for a bad run name, rank or option and zmq.ZMQError for a malformed
        endpoint; nothing after construction raises. CURVE keys are Z85 (``zmq.curve_keypair``).
        """
        if not wire.RUN_RE.match(run):
            raise ValueError(f"run {run!r} does not match {wire.RUN_RE.pattern}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world={world_size}")
        if max_queue < 1 or max_spool_bytes < 1 or resend_after <= 0 or linger_ms < 0:
            raise ValueError("max_queue, max_spool_bytes, resend_after must be positive")
        if (client_secret_key is None) != (client_public_key is None):
            raise ValueError("give both client_secret_key and client_public_key, or neither")
        if client_secret_key is not None and server_public_key is None:
            raise ValueError("client CURVE keys need server_public_key")
        self.endpoint = endpoint
        self.run, self.rank, self.world_size = run, rank, world_size
        self.session = uuid.uuid4().hex
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self.max_queue = max_queue
        self.max_spool_bytes = max_spool_bytes
        self.resend_after = resend_after
        self.spool_after = 2.0 * resend_after
        self.linger_ms = linger_ms

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: PriorityDropQueue[Item] = PriorityDropQueue(max_queue)
        self._front: dict[str, int] = {"submitted": 0, "dropped": 0}  # training-thread side
        self._published = TransportCounters()
        self._settled = True
        self._wake_armed = True
        self._disabled = False
        self._closing_deadline: float | None = None
        self._give_up_at = 0.0
        self._closed = False
        self._finished = threading.Event()

        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
        try:
            self._sock = self._ctx.socket(zmq.DEALER)
            self._configure(_key(server_public_key), _key(client_secret_key),
                            _key(client_public_key))
            self._sock.connect(endpoint)
        except Exception:
            self._ctx.destroy(linger=0)
            raise
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sender = Sender(self)
        self._thread = threading.Thread(target=self._sender.run, name="spikewatch-transport",
                                        daemon=True)
        _LIVE.add(self)
        self._thread.start()

    def _configure(self, server_key: bytes | None, secret: bytes | None,
                   public: bytes | None) -> None:
        s = self._sock
        s.setsockopt(zmq.LINGER, self.linger_ms)
        hwm = max(1000, 2 * self.max_queue)
        s.setsockopt(zmq.SNDHWM, hwm)
        s.setsockopt(zmq.RCVHWM, hwm)
        s.setsockopt(zmq.SNDTIMEO, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)  # no queueing toward an absent peer: we spool instead
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        s.setsockopt(zmq.CONNECT_TIMEOUT, 5000)
        s.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # a hung server drops the connection in ~3 s
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        s.setsockopt(zmq.HEARTBEAT_TTL, 3000)
        s.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME_BYTES)  # replies are small; refuse floods
        if server_key is not None:
            if secret is None or public is None:
                public, secret = zmq.curve_keypair()  # encrypted, but not on any allow-list
            s.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            s.setsockopt(zmq.CURVE_PUBLICKEY, public)
            s.setsockopt(zmq.CURVE_SECRETKEY, secret)

    # --- training-thread API -------------------------------------------------------------------

    def hello(self, meta: Mapping[str, wire.Scalar]) -> bool:
        """Queue the run metadata message (priority 2, acknowledged like a batch)."""
        try:
            return self._put(HelloItem(dict(meta)), PRIORITY_EVENTS)
        except Exception:
            return self._refuse()

    def submit(self, records: Sequence[wire.Record], priority: int = PRIORITY_SIGNALS) -> bool:
        """Queue records as one batch; never blocks or raises. False if something was dropped."""
        try:
            batch = tuple(records)
            if not batch:
                return True
            return self._put(batch, int(priority))
        except Exception:
            return self._refuse()

    def _refuse(self) -> bool:
        with self._lock:
            self._front["dropped"] += 1
        return False

    def _put(self, item: Item, priority: int) -> bool:
        with self._lock:
            if (self._disabled or self._closing_deadline is not None
                    or self._finished.is_set()):
                self._front["dropped"] += 1
                return False
            accepted, evicted = self._queue.put(item, priority)
            self._front["dropped"] += evicted + (not accepted)
            if accepted:
                self._front["submitted"] += 1
                self._settled = False
            # Wake the sender only if it sleeps; while busy it drains every DRAIN_INTERVAL, so
            # frequent submits cost no syscall and no thread switch.
            wake = self._wake_armed or len(self._queue) == self.max_queue // 2 + 1
            self._wake_armed = False
        if wake:
            self._wake()
        return accepted and not evicted

    def _wake(self) -> None:
        if self._wake_w < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def counters(self) -> TransportCounters:
        """A consistent snapshot of the counters (cheap; any thread)."""
        with self._lock:
            p = self._published
            return TransportCounters(
                submitted=self._front["submitted"], queued=len(self._queue), sent=p.sent,
                acked=p.acked, resent=p.resent, spooled=p.spooled, replayed=p.replayed,
                dropped=p.dropped + self._front["dropped"], rejected=p.rejected,
                oversize=p.oversize, in_flight=p.in_flight, spool_pending=p.spool_pending,
                spool_bytes=p.spool_bytes, spool_corrupt=p.spool_corrupt, online=p.online,
                sender_cpu_seconds=p.sender_cpu_seconds)

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is acknowledged or spooled (or dropped)."""
        self._wake()
        with self._cond:
            return self._cond.wait_for(
                lambda: (self._settled and len(self._queue) == 0) or self._finished.is_set(),
                timeout=max(0.0, timeout))

    def close(self, timeout: float = 2.0) -> None:
        """Stop within about `timeout` seconds: deliver what can be, spool the rest. Idempotent.

        Returns as soon as everything is acknowledged; otherwise it keeps sending, replaying and
        probing an offline server until shortly before the timeout, then spools and logs the rest.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._disabled:
                return
            timeout = max(0.0, timeout)
            now = time.monotonic()
            # wait for acks until _give_up_at, keep the rest of the time to spool and close
            self._give_up_at = now + timeout - min(0.5, 0.25 * timeout)
            self._closing_deadline = now + timeout
        self._wake()
        self._thread.join(timeout=max(0.0, timeout) + 0.5)
        if self._thread.is_alive():
            log.warning("spikewatch transport did not stop within %.1f s; abandoning it", timeout)
        else:
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1
        _LIVE.discard(self)

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        """Disable this transport in a forked child without touching ZeroMQ."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._disabled = True
        self._closed = True
        self._front["dropped"] += self._queue.clear()
        _ORPHANED.extend((self._ctx, self._sock))
        self._finished = threading.Event()
        self._finished.set()
        spool = self._sender.spool
        if spool is not None:
            spool.forget_after_fork()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _header(self, seq: int) -> wire.Header:
        return wire.Header(self.session, seq, self.run, self.rank, self.world_size, time.time())


def _key(k: bytes | str | None) -> bytes | None:
    return k.encode("ascii") if isinstance(k, str) else k


def _after_fork_in_child() -> None:
    for t in list(_LIVE):
        t._after_fork_in_child()
    _LIVE.clear()


def _close_all_at_exit() -> None:
    for t in list(_LIVE):
        with contextlib.suppress(Exception):
            t.close(timeout=1.0)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
