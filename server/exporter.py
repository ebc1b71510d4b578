"""Prometheus exporter: a custom Collector that reads a fresh snapshot on every scrape.

The data source is injected (`ExportSource`), so the collector is testable with its own
`CollectorRegistry`; `StoreExportSource` is the real one (the Store plus the server's own counters).

Exposed names (fixed; dashboards and rules rely on them): per active run, label ``run`` only,
``spikewatch_run_<metric>`` for every `spikewatch.protocol.names.EXPORTED` metric,
``spikewatch_run_last_step``,
``spikewatch_run_last_seen_timestamp_seconds``, ``spikewatch_run_alert_state{run,rule,severity}``
(1 pending, 2 firing); ``spikewatch_active_runs``; server health counters and gauges. Label sets are
bounded: no per-layer labels, at most `max_runs` runs (most recently seen first) and what was left
out is counted in ``spikewatch_refused_series_total``. No sample carries a timestamp.
"""

from __future__ import annotations

import importlib.metadata
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from spikewatch.protocol.names import BY_NAME, EXPORTED
from spikewatch.server._stats import Stats
from spikewatch.server.store.reads import StoreReads
from spikewatch.server.types import AlertState, Severity

PREFIX: Final = "spikewatch"
DEFAULT_MAX_RUNS: Final = 200
DEFAULT_ACTIVE_WINDOW_S: Final = 15 * 60.0
ALERT_STATE_VALUE: Final[dict[str, float]] = {AlertState.PENDING.value: 1.0,
                                              AlertState.FIRING.value: 2.0}


@dataclass(frozen=True, slots=True)
class RunInfo:
    """An active run as the exporter sees it."""

    name: str
    last_step: int | None  # None until the first batch
    last_seen: float  # unix seconds


@dataclass(frozen=True, slots=True)
class AlertInfo:
    """An alert that is currently pending or firing."""

    run: str
    rule: str
    severity: str
    state: str


@dataclass(frozen=True, slots=True)
class LatencyHistogram:
    """Cumulative histogram: `buckets` are (upper bound, count ≤ bound), +Inf last."""

    buckets: tuple[tuple[float, float], ...] = ((math.inf, 0.0),)
    sum: float = 0.0


@dataclass(frozen=True, slots=True)
class HealthStats:
    """The server's own counters at scrape time (all cumulative except `queue_depth`)."""

    received: Mapping[str, float] = field(default_factory=dict)  # by message type
    invalid: Mapping[str, float] = field(default_factory=dict)  # by WireError reason
    deduplicated: float = 0.0
    points_written: float = 0.0
    write_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    queue_depth: float = 0.0
    # (notifier, outcome) -> count
    notifications: Mapping[tuple[str, str], float] = field(default_factory=dict)
    refused_series: float = 0.0  # refused upstream (ingest side); the exporter adds its own
    unauthenticated: float = 0.0  # agent connections refused by CURVE authentication


class ExportSource(Protocol):
    """What the collector reads on each scrape."""

    def active_runs(self) -> Sequence[RunInfo]:
        """Runs seen within the active window (cheap: no metric values)."""
        ...

    def latest(self, run: str) -> Mapping[str, float]:
        """Latest global value of each metric of one run."""
        ...

    def open_alerts(self) -> Sequence[AlertInfo]:
        """Alerts currently pending or firing, all runs."""
        ...

    def health(self) -> HealthStats:
        """The server's own counters."""
        ...


def _name(metric: str) -> str:
    return f"{PREFIX}_run_{metric}"


class SpikewatchCollector(Collector):
    """Builds the whole exposition from an `ExportSource` on every `collect()`."""

    def __init__(self, source: ExportSource, *, max_runs: int = DEFAULT_MAX_RUNS,
                 version: str = "unknown") -> None:
        if max_runs < 0:
            raise ValueError("max_runs must be ≥ 0")
        self._source = source
        self._max_runs = max_runs
        self._version = version
        self._refused = 0.0  # series left out by this collector, summed over scrapes
        self._lock = threading.Lock()

    def describe(self) -> Iterable[Metric]:
        """Nothing: registering must not query the source."""
        return ()

    def collect(self) -> Iterable[Metric]:
        """One consistent snapshot of runs, alerts and server health."""
        runs = sorted(self._source.active_runs(), key=lambda r: (-r.last_seen, r.name))
        kept, left_out = runs[: self._max_runs], runs[self._max_runs:]
        alerts = self._source.open_alerts()
        kept_names = {r.name for r in kept}
        per_run = {m: GaugeMetricFamily(_name(m), _doc(m), labels=["run"]) for m in EXPORTED}
        last_step = GaugeMetricFamily(_name("last_step"), "Last step received from the run.",
                                      labels=["run"])
        last_seen = GaugeMetricFamily(_name("last_seen_timestamp_seconds"),
                                      "Unix time the run last sent data.", labels=["run"])
        for r in kept:
            values = self._source.latest(r.name)
            for m in EXPORTED:
                if m in values:
                    per_run[m].add_metric([r.name], float(values[m]))
            if r.last_step is not None:
                last_step.add_metric([r.name], float(r.last_step))
            last_seen.add_metric([r.name], r.last_seen)
        state = GaugeMetricFamily(_name("alert_state"),
                                  "Alert state per active run and rule: 1 pending, 2 firing.",
                                  labels=["run", "rule", "severity"])
        firing = {s.value: 0.0 for s in Severity}
        left_names = {r.name for r in left_out}
        left_alerts = 0
        for a in alerts:
            value = ALERT_STATE_VALUE.get(a.state)
            if value is None:
                continue
            if a.state == AlertState.FIRING:
                firing[a.severity] = firing.get(a.severity, 0.0) + 1.0
            if a.run in kept_names:
                state.add_metric([a.run, a.rule, a.severity], value)
            elif a.run in left_names:
                left_alerts += 1
        with self._lock:
            self._refused += len(left_out) * (len(EXPORTED) + 2) + left_alerts
            refused_total = self._refused
        yield from per_run.values()
        yield last_step
        yield last_seen
        yield state
        yield GaugeMetricFamily(f"{PREFIX}_active_runs",
                                "Runs seen within the active window (exported or not).",
                                value=float(len(runs)))
        fam = GaugeMetricFamily(f"{PREFIX}_alerts_firing", "Firing alerts by severity, all runs.",
                                labels=["severity"])
        for sev, n in sorted(firing.items()):
            fam.add_metric([sev], n)
        yield fam
        yield from self._health(self._source.health(), refused_total)
        info = GaugeMetricFamily(f"{PREFIX}_build_info", "spikewatch version.", labels=["version"])
        info.add_metric([self._version], 1.0)
        yield info

    def _health(self, h: HealthStats, refused_by_exporter: float) -> Iterable[Metric]:
        rec = CounterMetricFamily(f"{PREFIX}_messages_received_total",
                                  "Agent messages received, by type.", labels=["type"])
        for t in sorted({"hello", "batch", *h.received}):
            rec.add_metric([t], float(h.received.get(t, 0.0)))
        yield rec
        inv = CounterMetricFamily(f"{PREFIX}_messages_invalid_total",
                                  "Agent messages rejected, by reason.", labels=["reason"])
        for reason, n in sorted(h.invalid.items()):
            inv.add_metric([reason], float(n))
        yield inv
        yield CounterMetricFamily(f"{PREFIX}_messages_deduplicated_total",
                                  "Resent agent messages recognised and not stored twice.",
                                  value=float(h.deduplicated))
        yield CounterMetricFamily(f"{PREFIX}_points_written_total",
                                  "Data points committed to the store.",
                                  value=float(h.points_written))
        lat = HistogramMetricFamily(f"{PREFIX}_write_latency_seconds",
                                    "Time to commit one write to the store.")
        lat.add_metric([], [(_bound(le), float(n)) for le, n in h.write_latency.buckets],
                       float(h.write_latency.sum))
        yield lat
        yield GaugeMetricFamily(f"{PREFIX}_ingest_queue_depth",
                                "Messages received and waiting to be written.",
                                value=float(h.queue_depth))
        notif = CounterMetricFamily(f"{PREFIX}_notifications_total",
                                    "Notifications by notifier and outcome (sent|failed|retried).",
                                    labels=["notifier", "outcome"])
        for (notifier, outcome), n in sorted(h.notifications.items()):
            notif.add_metric([notifier, outcome], float(n))
        yield notif
        yield CounterMetricFamily(
            f"{PREFIX}_refused_series_total",
            "Series left out to bound cardinality (run cap per scrape, plus ingest refusals).",
            value=float(h.refused_series) + refused_by_exporter)
        yield CounterMetricFamily(
            f"{PREFIX}_messages_unauthenticated_total",
            "Agent connections refused by CURVE authentication (key not on the allow-list).",
            value=float(h.unauthenticated))


def _bound(le: float) -> str:
    return "+Inf" if le == math.inf else repr(float(le))


def _doc(metric: str) -> str:
    m = BY_NAME[metric]
    return f"Latest {m.description} (unit {m.unit}; source {m.source})."


def package_version() -> str:
    """The installed spikewatch version (``0+unknown`` when running from a bare checkout)."""
    try:
        return importlib.metadata.version("spikewatch")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def build_registry(source: ExportSource, *, max_runs: int = DEFAULT_MAX_RUNS,
                   version: str | None = None) -> CollectorRegistry:
    """A fresh registry holding only the spikewatch collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SpikewatchCollector(source, max_runs=max_runs,
                                          version=version or package_version()))
    return registry


class StoreExportSource:
    """The real `ExportSource`: runs and alerts from the Store, health from `server._stats.Stats`.

    A run is active when it sent data within `active_window_s` (default 15 min) of `clock()`.
    """

    def __init__(self, store: StoreReads, stats: Stats | None = None, *,
                 active_window_s: float = DEFAULT_ACTIVE_WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        if active_window_s <= 0:
            raise ValueError("active_window_s must be > 0")
        self._store = store
        self._stats = stats
        self._window = active_window_s
        self._clock = clock

    def active_runs(self) -> Sequence[RunInfo]:
        """Runs whose last_seen is within the window."""
        since = self._clock() - self._window
        return [RunInfo(r.name, r.last_step, r.last_seen)
                for r in self._store.list_runs() if r.last_seen >= since]

    def latest(self, run: str) -> Mapping[str, float]:
        """Latest global value of each metric."""
        return self._store.latest(run)

    def open_alerts(self) -> Sequence[AlertInfo]:
        """Pending and firing alerts of every run."""
        return [AlertInfo(a.run, a.rule, a.severity, a.state)
                for state in ALERT_STATE_VALUE for a in self._store.alerts(state=state)]

    def health(self) -> HealthStats:
        """A snapshot of the server's counters (zeros when no Stats was given)."""
        if self._stats is None:
            return HealthStats()
        s = self._stats.snapshot()
        return HealthStats(
            received=s.received, invalid=s.invalid, deduplicated=s.deduplicated,
            points_written=s.points_written,
            write_latency=LatencyHistogram(tuple((b, float(n)) for b, n in
                                                 s.write_latency_buckets), s.write_latency_sum),
            queue_depth=s.queue_depth, notifications=s.notifications,
            refused_series=s.refused_series, unauthenticated=s.unauthenticated)
