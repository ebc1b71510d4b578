"""The server's own health counters, shared by the collector (writes) and the exporter (reads).

They are prometheus_client metrics in a registry of their own (`Stats.registry`), so several
daemons can live in one process (tests do), each with its own counts. The metrics carry the names
the exporter publishes:

=============================  ==============================================
``received[type]``             ``spikewatch_messages_received_total{type}``
``invalid[reason]``            ``spikewatch_messages_invalid_total{reason}``
``deduplicated``               ``spikewatch_messages_deduplicated_total``
``points_written``             ``spikewatch_points_written_total``
``write_latency_*``            ``spikewatch_write_latency_seconds`` (histogram)
``queue_depth``                ``spikewatch_ingest_queue_depth``
``notifications[(n, o)]``      ``spikewatch_notifications_total{notifier,outcome}`` (from the
                               notification source, e.g. the dispatcher)
``refused_series``             ``spikewatch_refused_series_total``
``unauthenticated``            ``spikewatch_messages_unauthenticated_total``
=============================  ==============================================

Read them as plain numbers with `Stats.snapshot()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the write-latency histogram; +Inf is implicit."""


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """The counters as plain numbers at one instant."""

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


def _by_label(counter: Counter, label: str) -> dict[str, int]:
    """A labelled counter's totals keyed by `label`'s value."""
    return {s.labels[label]: int(s.value)
            for family in counter.collect() for s in family.samples if s.name.endswith("_total")}


class Stats:
    """Health counters of one server process (thread-safe: prometheus_client metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self._received = Counter("spikewatch_messages_received",
                                 "Agent messages received, by type.", ["type"], registry=reg)
        self._invalid = Counter("spikewatch_messages_invalid",
                                "Agent messages rejected, by reason.", ["reason"], registry=reg)
        self._deduplicated = Counter(
            "spikewatch_messages_deduplicated",
            "Resent agent messages recognised and not stored twice.", registry=reg)
        self._points = Counter("spikewatch_points_written", "Data points committed to the store.",
                               registry=reg)
        self._latency = Histogram("spikewatch_write_latency_seconds",
                                  "Time to commit one write to the store.",
                                  buckets=LATENCY_BUCKETS, registry=reg)
        self._queue_depth = Gauge("spikewatch_ingest_queue_depth",
                                  "Messages received and waiting to be written.", registry=reg)
        self._refused = Counter("spikewatch_refused_series",
                                "Series refused at ingest to bound cardinality.", registry=reg)
        self._unauth = Counter(
            "spikewatch_messages_unauthenticated",
            "Agent connections refused by CURVE authentication.", registry=reg)
        self.collector_running = False
        self.started_at = time.time()
        self._notif_source: Callable[[], Mapping[tuple[str, str], int]] | None = None

    def set_notification_source(self, fn: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        """Report the notification counts `fn` returns (`server.notify.Dispatcher.snapshot`)."""
        self._notif_source = fn

    def message_received(self, type_: str) -> None:
        """Count a decoded message by type (hello|batch)."""
        self._received.labels(type_).inc()

    def message_invalid(self, reason: str) -> None:
        """Count a rejected frame by its WireError reason."""
        self._invalid.labels(reason).inc()

    def message_deduplicated(self, n: int = 1) -> None:
        """Count messages that were already stored (resent by an agent)."""
        self._deduplicated.inc(n)

    def points_written(self, n: int) -> None:
        """Count points committed to the store."""
        self._points.inc(n)

    def write_latency(self, seconds: float) -> None:
        """Observe the duration of one committed write transaction."""
        self._latency.observe(seconds)

    def set_queue_depth(self, n: int) -> None:
        """Record how many messages wait for the writer."""
        self._queue_depth.set(n)

    def refused_series(self, n: int = 1) -> None:
        """Count series left out of the exposition to bound cardinality."""
        self._refused.inc(n)

    def unauthenticated(self) -> None:
        """Count an agent connection refused by authentication."""
        self._unauth.inc()

    def snapshot(self) -> StatsSnapshot:
        """Every counter as a plain number."""
        buckets: list[tuple[float, int]] = []
        lat_sum, lat_count = 0.0, 0
        for s in (s for family in self._latency.collect() for s in family.samples):
            if s.name.endswith("_bucket"):
                buckets.append((float(s.labels["le"]), int(s.value)))
            elif s.name.endswith("_sum"):
                lat_sum = s.value
            elif s.name.endswith("_count"):
                lat_count = int(s.value)
        buckets.sort(key=lambda b: b[0])  # +Inf last
        return StatsSnapshot(
            received=_by_label(self._received, "type"),
            invalid=_by_label(self._invalid, "reason"),
            deduplicated=self._sample("spikewatch_messages_deduplicated_total"),
            points_written=self._sample("spikewatch_points_written_total"),
            write_latency_buckets=tuple(buckets), write_latency_sum=lat_sum,
            write_latency_count=lat_count,
            queue_depth=self._sample("spikewatch_ingest_queue_depth"),
            notifications=dict(self._notif_source()) if self._notif_source is not None else {},
            refused_series=self._sample("spikewatch_refused_series_total"),
            unauthenticated=self._sample("spikewatch_messages_unauthenticated_total"),
            collector_running=self.collector_running, started_at=self.started_at)

    def _sample(self, name: str) -> int:
        return int(self.registry.get_sample_value(name) or 0)
