"""The server's own health counters, shared by the collector (writes) and the exporter (reads).

Field names follow the Prometheus names the exporter publishes:

=============================  ==============================================
``received[type]``             ``spikewatch_messages_received_total{type}``
``invalid[reason]``            ``spikewatch_messages_invalid_total{reason}``
``deduplicated``               ``spikewatch_messages_deduplicated_total``
``points_written``             ``spikewatch_points_written_total``
``write_latency_*``            ``spikewatch_write_latency_seconds`` (histogram)
``queue_depth``                ``spikewatch_ingest_queue_depth``
``notifications[(n, o)]``      ``spikewatch_notifications_total{notifier,outcome}``
``refused_series``             ``spikewatch_refused_series_total``
``unauthenticated``            agents refused by CURVE authentication
=============================  ==============================================

Read a consistent copy with `Stats.snapshot()`.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the write-latency histogram; +Inf is implicit."""


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """A consistent copy of the counters at one instant."""

    received: dict[str, int]
    invalid: dict[str, int]
    deduplicated: int
    points_written: int
    write_latency_buckets: tuple[tuple[float, int], ...]  # (bound, cumulative count), +Inf last
    write_latency_sum: float
    write_latency_count: int
    queue_depth: int
    notifications: dict[tuple[str, str], int]
    refused_series: int
    unauthenticated: int
    collector_running: bool
    started_at: float


class Stats:
    """Thread-safe health counters of one server process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: Counter[str] = Counter()
        self._invalid: Counter[str] = Counter()
        self._deduplicated = 0
        self._points = 0
        self._lat_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._lat_sum = 0.0
        self._queue_depth = 0
        self._notifications: Counter[tuple[str, str]] = Counter()
        self._refused = 0
        self._unauth = 0
        self.collector_running = False
        self.started_at = time.time()
        self._notif_source: Callable[[], Mapping[tuple[str, str], int]] | None = None

    def set_notification_source(self, fn: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        """Also report the counts `fn` returns (e.g. `server.notify.Dispatcher.snapshot`)."""
        self._notif_source = fn

    def message_received(self, type_: str) -> None:
        """Count a decoded message by type (hello|batch)."""
        with self._lock:
            self._received[type_] += 1

    def message_invalid(self, reason: str) -> None:
        """Count a rejected frame by its WireError reason."""
        with self._lock:
            self._invalid[reason] += 1

    def message_deduplicated(self, n: int = 1) -> None:
        """Count messages that were already stored (resent by an agent)."""
        with self._lock:
            self._deduplicated += n

    def points_written(self, n: int) -> None:
        """Count points committed to the store."""
        with self._lock:
            self._points += n

    def write_latency(self, seconds: float) -> None:
        """Observe the duration of one committed write transaction."""
        i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            self._lat_counts[i] += 1
            self._lat_sum += seconds

    def set_queue_depth(self, n: int) -> None:
        """Record how many messages wait for the writer."""
        self._queue_depth = n

    def notification(self, notifier: str, outcome: str) -> None:
        """Count a notification attempt (outcome: sent|failed|retried)."""
        with self._lock:
            self._notifications[(notifier, outcome)] += 1

    def refused_series(self, n: int = 1) -> None:
        """Count series left out of the exposition to bound cardinality."""
        with self._lock:
            self._refused += n

    def unauthenticated(self) -> None:
        """Count an agent connection refused by authentication."""
        with self._lock:
            self._unauth += 1

    def snapshot(self) -> StatsSnapshot:
        """A consistent copy of every counter."""
        extra = dict(self._notif_source()) if self._notif_source is not None else {}
        with self._lock:
            notifications = Counter(self._notifications)
            notifications.update(extra)
            cum, acc = [], 0
            for bound, c in zip((*LATENCY_BUCKETS, float("inf")), self._lat_counts, strict=True):
                acc += c
                cum.append((bound, acc))
            return StatsSnapshot(
                received=dict(self._received), invalid=dict(self._invalid),
                deduplicated=self._deduplicated, points_written=self._points,
                write_latency_buckets=tuple(cum), write_latency_sum=self._lat_sum,
                write_latency_count=acc, queue_depth=self._queue_depth,
                notifications=dict(notifications), refused_series=self._refused,
                unauthenticated=self._unauth, collector_running=self.collector_running,
                started_at=self.started_at)
