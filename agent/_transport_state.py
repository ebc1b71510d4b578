"""What the transport's two threads share: its options, and the state the lock guards.

The training thread (`Transport`) and the sender thread (`Sender`) each hold the same
`SharedState` and use its fields by name; every field marked *locked* is read and written under
`lock` only. The wake pipe lets a submit rouse a sleeping sender without a busy poll.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from spikewatch.agent._counters import TransportCounters
from spikewatch.agent._transport_frames import Item
from spikewatch.agent._transport_queue import PriorityDropQueue
from spikewatch.protocol import wire


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """The options of one transport, checked once and fixed for its life."""

    endpoint: str
    run: str
    session: str  # a fresh id per transport: the server deduplicates by (session, seq)
    rank: int = 0
    world_size: int = 1
    spool_dir: Path | None = None
    max_queue: int = 256  # queued items, and messages in flight, at most
    max_spool_bytes: int = 256 << 20
    resend_after: float = 2.0  # seconds before the first re-send of an unacknowledged message
    linger_ms: int = 200

    def __post_init__(self) -> None:
        if not wire.RUN_RE.match(self.run):
            raise ValueError(f"run {self.run!r} does not match {wire.RUN_RE.pattern}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={self.rank} "
                             f"world={self.world_size}")
        if (self.max_queue < 1 or self.max_spool_bytes < 1 or self.resend_after <= 0
                or self.linger_ms < 0):
            raise ValueError("max_queue, max_spool_bytes, resend_after must be positive")

    @property
    def spool_after(self) -> float:
        """Seconds without any ack, while messages wait, after which the server counts as away."""
        return 2.0 * self.resend_after

    def header(self, seq: int) -> wire.Header:
        """The header of this transport's message number `seq`, stamped now."""
        return wire.Header(self.session, seq, self.run, self.rank, self.world_size, time.time())


MAX_ALERTS = 256  # alert replies kept until the training thread takes them


@dataclass(eq=False)
class SharedState:
    """The hand-off between the training thread and the sender thread."""

    queue: PriorityDropQueue[Item]  # locked
    lock: threading.Lock = field(default_factory=threading.Lock)
    cond: threading.Condition = field(init=False)  # on `lock`: flush() waits on it
    submitted: int = 0  # locked: items the training thread queued
    dropped: int = 0  # locked: items refused or evicted on the training thread's side
    published: TransportCounters = field(default_factory=TransportCounters)  # locked
    settled: bool = True  # locked: queue empty and everything sent is acknowledged or spooled
    wake_armed: bool = True  # locked: the sender sleeps, so the next submit wakes it
    disabled: bool = False  # a forked child's copy: everything is refused
    closing_deadline: float | None = None  # set once by close(): the sender stops by then
    give_up_at: float = 0.0  # set with closing_deadline: stop waiting for acks here
    finished: threading.Event = field(default_factory=threading.Event)  # the sender has stopped
    # the server's alert replies: appended by the sender, taken by the training thread (a deque's
    # append and popleft are atomic; the oldest go first when nobody takes them)
    alerts: deque[wire.Alert] = field(default_factory=lambda: deque(maxlen=MAX_ALERTS))
    wake_r: int = field(init=False)
    wake_w: int = field(init=False)

    def __post_init__(self) -> None:
        self.cond = threading.Condition(self.lock)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self) -> None:
        """Rouse the sender thread (a no-op once the pipe is closed)."""
        if self.wake_w < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"\0")

    def clear_wakes(self) -> None:
        """Sender: consume the pending wake-ups."""
        with contextlib.suppress(OSError):
            os.read(self.wake_r, 4096)

    def close_wake_pipe(self) -> None:
        """Close both ends of the wake pipe (after the sender has stopped, or in a child)."""
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.wake_r = self.wake_w = -1

    def take_queued(self) -> list[tuple[int, Item]]:
        """Sender: everything queued, oldest first; an empty queue arms the next submit's wake."""
        with self.lock:
            items = self.queue.take_all()
            self.wake_armed = not items  # idle: the next submit wakes us; busy: we come back
        return items

    def take_alerts(self) -> list[wire.Alert]:
        """Training thread: the alert replies received since the last call, oldest first."""
        out = []
        while self.alerts:
            out.append(self.alerts.popleft())
        return out

    def queue_is_empty(self) -> bool:
        with self.lock:
            return len(self.queue) == 0

    def publish(self, counters: TransportCounters, in_flight_settled: bool) -> None:
        """Sender: store its counters; wake flush() once nothing is left unsettled."""
        with self.lock:
            self.published = counters
            if in_flight_settled and len(self.queue) == 0:
                self.settled = True
                self.cond.notify_all()

    def finish(self) -> None:
        """Sender: it has stopped; release every waiter."""
        self.finished.set()
        with self.cond:
            self.cond.notify_all()

    def snapshot(self) -> TransportCounters:
        """The sender's last counters merged with the training thread's (any thread)."""
        with self.lock:
            p = self.published
            return TransportCounters(
                submitted=self.submitted, queued=len(self.queue), sent=p.sent, acked=p.acked,
                resent=p.resent, spooled=p.spooled, replayed=p.replayed,
                dropped=p.dropped + self.dropped, rejected=p.rejected, oversize=p.oversize,
                in_flight=p.in_flight, spool_pending=p.spool_pending, spool_bytes=p.spool_bytes,
                spool_corrupt=p.spool_corrupt, online=p.online,
                sender_cpu_seconds=p.sender_cpu_seconds)

    def disable_after_fork(self) -> None:
        """In a forked child: fresh lock (the parent's may have been held), nothing queued."""
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.disabled = True
        self.dropped += self.queue.clear()
        self.finished = threading.Event()
        self.finished.set()
        self.close_wake_pipe()
