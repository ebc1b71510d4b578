"""Dispatcher: hands transitions to notifiers on background threads, never blocking the caller.

Each notifier gets its own worker thread and bounded queue, so a dead webhook cannot delay
Alertmanager. A delivery that fails is retried in place (order per notifier is kept, so a resolve
never overtakes its firing) with exponential backoff (the `Retry` policy); a full queue drops the
transition and counts it as failed. Outcome counters (sent / failed / retried per notifier) are
read with `snapshot()`. `close()` delivers what is queued (one attempt each) within its timeout.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from spikewatch.server.types import Transition

log = logging.getLogger(__name__)
OUTCOMES = ("sent", "failed", "retried")


class Notifier(Protocol):
    """A delivery target. `send`/`resend` raise on failure and return whether they posted."""

    name: str

    def send(self, t: Transition) -> bool: ...

    def resend(self) -> bool: ...

    def close(self) -> None: ...


class _Counters:
    def __init__(self, names: Sequence[str]) -> None:
        self._lock = threading.Lock()
        self._c = {(n, o): 0 for n in names for o in OUTCOMES}

    def add(self, name: str, outcome: str, n: int = 1) -> None:
        with self._lock:
            self._c[(name, outcome)] += n

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._c)


@dataclass(frozen=True)
class Retry:
    """How a failed delivery is retried: up to `attempts` in all, waiting `backoff` seconds
    after the first failure and twice as long after each next one, at most `max_backoff`."""

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or not 0 <= self.backoff <= self.max_backoff:
            raise ValueError("Retry needs attempts ≥ 1 and 0 ≤ backoff ≤ max_backoff")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))


_STOP = object()


class _Worker:
    def __init__(
        self,
        notifier: Notifier,
        counters: _Counters,
        queue_size: int,
        retry: Retry,
        tick: float,
    ) -> None:
        self.notifier = notifier
        self.queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._counters = counters
        self._retry = retry
        self._tick = tick
        self.closing = threading.Event()
        self.thread = threading.Thread(
            target=self._loop, name=f"spikewatch-notify-{notifier.name}", daemon=True
        )

    def _loop(self) -> None:
        name = self.notifier.name
        while True:
            try:
                item = self.queue.get(timeout=self._tick)
            except queue.Empty:
                if self.closing.is_set():
                    return  # drained (the stop marker may not have fit in a full queue)
                item = None
            if item is _STOP:
                return
            if isinstance(item, Transition):
                self._deliver(item)
            if self.closing.is_set():
                continue  # drain only; no periodic re-sends while closing
            try:
                if self.notifier.resend():
                    self._counters.add(name, "sent")
            except Exception as e:
                self._counters.add(name, "failed")
                log.warning("notifier %s: re-send failed: %s", name, e)

    def _deliver(self, t: Transition) -> None:
        name = self.notifier.name
        for attempt in range(1, self._retry.attempts + 1):
            try:
                if self.notifier.send(t):
                    self._counters.add(name, "sent")
                return
            except Exception as e:
                last = attempt >= self._retry.attempts or self.closing.is_set()
                log.warning(
                    "notifier %s: %s/%s %s attempt %d failed: %s",
                    name,
                    t.run,
                    t.rule,
                    t.state.value,
                    attempt,
                    e,
                )
                if last:
                    self._counters.add(name, "failed")
                    return
                self._counters.add(name, "retried")
                self.closing.wait(self._retry.delay(attempt))


class Dispatcher:
    """Non-blocking fan-out of transitions to notifiers with retries and outcome counters."""

    def __init__(
        self,
        notifiers: Sequence[Notifier],
        *,
        retry: Retry = Retry(),  # frozen: one shared default is safe
        queue_size: int = 1000,
        tick: float = 1.0,
    ) -> None:
        names = [n.name for n in notifiers]
        if len(set(names)) != len(names):
            raise ValueError(f"notifier names must be unique: {names}")
        if queue_size < 1 or tick <= 0:
            raise ValueError("queue_size must be ≥ 1 and tick > 0")
        self._counters = _Counters(names)
        self._workers = [
            _Worker(n, self._counters, queue_size, retry, tick)
            for n in notifiers
        ]
        self._closed = False
        for w in self._workers:
            w.thread.start()

    def submit(self, t: Transition) -> None:
        """Queue a transition for every notifier; never blocks (a full queue counts as failed)."""
        for w in self._workers:
            if self._closed:
                self._counters.add(w.notifier.name, "failed")
                continue
            try:
                w.queue.put_nowait(t)
            except queue.Full:
                self._counters.add(w.notifier.name, "failed")
                log.warning(
                    "notifier %s: queue full, dropped %s/%s %s",
                    w.notifier.name,
                    t.run,
                    t.rule,
                    t.state.value,
                )

    def snapshot(self) -> dict[tuple[str, str], int]:
        """Outcome counts keyed by (notifier, outcome), outcome in sent|failed|retried."""
        return self._counters.snapshot()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (no further retries) and stop, within `timeout` seconds."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        for w in self._workers:
            w.closing.set()
            with contextlib.suppress(queue.Full):
                w.queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
        for w in self._workers:
            w.thread.join(max(0.0, deadline - time.monotonic()))
            if not w.thread.is_alive():
                w.notifier.close()
            else:
                log.warning("notifier %s: still busy at close; abandoned", w.notifier.name)
