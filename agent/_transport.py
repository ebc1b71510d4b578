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

The pieces: `TransportOptions` and `SharedState` (`agent._transport_state`: what this object and
the sender thread share, by name), the `Link` that owns the socket and its ZeroMQ options
(`agent._transport_link`), the `Sender` loop (`agent._transport_sender`) and the frames it
encodes (`agent._transport_frames`).

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
from typing import Final

from spikewatch.agent._counters import TransportCounters
from spikewatch.agent._transport_frames import HelloItem, Item
from spikewatch.agent._transport_link import Link
from spikewatch.agent._transport_queue import PriorityDropQueue
from spikewatch.agent._transport_sender import Sender
from spikewatch.agent._transport_state import SharedState, TransportOptions
from spikewatch.protocol import wire

__all__ = ["PRIORITY_DIAGNOSTICS", "PRIORITY_EVENTS", "PRIORITY_SIGNALS", "Transport",
           "TransportCounters"]

log = logging.getLogger("spikewatch.agent.transport")

PRIORITY_DIAGNOSTICS: Final = 0
PRIORITY_SIGNALS: Final = 1
PRIORITY_EVENTS: Final = 2  # hello uses this too

_LIVE: weakref.WeakSet[Transport] = weakref.WeakSet()


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
        self.options = TransportOptions(
            endpoint, run, uuid.uuid4().hex, rank=rank, world_size=world_size,
            spool_dir=Path(spool_dir) if spool_dir is not None else None, max_queue=max_queue,
            max_spool_bytes=max_spool_bytes, resend_after=resend_after, linger_ms=linger_ms)
        link = Link(endpoint, linger_ms=linger_ms, max_queue=max_queue,
                    server_public_key=server_public_key, client_secret_key=client_secret_key,
                    client_public_key=client_public_key)
        self._shared = SharedState(PriorityDropQueue[Item](max_queue))
        self._closed = False
        self._sender = Sender(self.options, self._shared, link)
        self._thread = threading.Thread(target=self._sender.run, name="spikewatch-transport",
                                        daemon=True)
        _LIVE.add(self)
        self._thread.start()

    @property
    def session(self) -> str:
        """This transport's session id: the server deduplicates by (session, seq)."""
        return self.options.session

    @property
    def run(self) -> str:
        return self.options.run

    @property
    def max_queue(self) -> int:
        return self.options.max_queue

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
        with self._shared.lock:
            self._shared.dropped += 1
        return False

    def _put(self, item: Item, priority: int) -> bool:
        shared = self._shared
        with shared.lock:
            if shared.disabled or shared.closing_deadline is not None or shared.finished.is_set():
                shared.dropped += 1
                return False
            accepted, evicted = shared.queue.put(item, priority)
            shared.dropped += evicted + (not accepted)
            if accepted:
                shared.submitted += 1
                shared.settled = False
            # Wake the sender only if it sleeps; while busy it drains every DRAIN_INTERVAL, so
            # frequent submits cost no syscall and no thread switch.
            wake = shared.wake_armed or len(shared.queue) == self.options.max_queue // 2 + 1
            shared.wake_armed = False
        if wake:
            shared.wake()
        return accepted and not evicted

    def take_alerts(self) -> list[wire.Alert]:
        """The server's alerts on this run that started or stopped firing since the last call
        (training thread; never blocks)."""
        return self._shared.take_alerts()

    def counters(self) -> TransportCounters:
        """A consistent snapshot of the counters (cheap; any thread)."""
        return self._shared.snapshot()

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is acknowledged or spooled (or dropped)."""
        shared = self._shared
        shared.wake()
        with shared.cond:
            return shared.cond.wait_for(
                lambda: (shared.settled and len(shared.queue) == 0) or shared.finished.is_set(),
                timeout=max(0.0, timeout))

    def close(self, timeout: float = 2.0) -> None:
        """Stop within about `timeout` seconds: deliver what can be, spool the rest. Idempotent.

        Returns as soon as everything is acknowledged; otherwise it keeps sending, replaying and
        probing an offline server until shortly before the timeout, then spools and logs the rest.
        """
        shared = self._shared
        with shared.lock:
            if self._closed:
                return
            self._closed = True
            if shared.disabled:
                return
            timeout = max(0.0, timeout)
            now = time.monotonic()
            # wait for acks until give_up_at, keep the rest of the time to spool and close
            shared.give_up_at = now + timeout - min(0.5, 0.25 * timeout)
            shared.closing_deadline = now + timeout
        shared.wake()
        self._thread.join(timeout=max(0.0, timeout) + 0.5)
        if self._thread.is_alive():
            log.warning("spikewatch transport did not stop within %.1f s; abandoning it", timeout)
        else:
            shared.close_wake_pipe()
        _LIVE.discard(self)

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        """Disable this transport in a forked child without touching ZeroMQ."""
        self._closed = True
        self._shared.disable_after_fork()
        self._sender.forget_after_fork()


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
