"""Prometheus exporter: exposition parsed with prometheus_client.parser, one registry per test."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from spikewatch.protocol import wire
from spikewatch.protocol.names import EXPORTED
from spikewatch.server._stats import Stats
from spikewatch.server.api import Tokens, create_app
from spikewatch.server.exporter import (
    AlertInfo,
    HealthStats,
    LatencyHistogram,
    RunInfo,
    StoreExportSource,
    build_registry,
)
from spikewatch.server.store import Store
from spikewatch.server.types import AlertState, Severity, Transition

TOKEN = "metrics-token-0123456789"


@dataclass
class MemorySource:
    """An in-memory ExportSource (the collector's injected data source)."""

    runs: list[RunInfo] = field(default_factory=list)
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    alerts: list[AlertInfo] = field(default_factory=list)
    stats: HealthStats = field(default_factory=HealthStats)
    latest_calls: list[str] = field(default_factory=list)

    def active_runs(self) -> Sequence[RunInfo]:
        return self.runs

    def latest(self, run: str) -> Mapping[str, float]:
        self.latest_calls.append(run)
        return self.values.get(run, {})

    def open_alerts(self) -> Sequence[AlertInfo]:
        return self.alerts

    def health(self) -> HealthStats:
        return self.stats


def _scrape(registry_text: bytes | str) -> dict[str, list[Sample]]:
    text = registry_text.decode() if isinstance(registry_text, bytes) else registry_text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _one(samples: list[Sample], **labels: str) -> float:
    (s,) = [s for s in samples if all(s.labels.get(k) == v for k, v in labels.items())]
    return s.value


def test_names_labels_values_and_no_timestamps() -> None:
    src = MemorySource(
        runs=[RunInfo("r1", 120, 1_700_000_000.5), RunInfo("r2", None, 1_699_999_999.0)],
        values={"r1": {"stability_ratio": 1.25, "loss": math.nan, "rho": math.inf,
                       "entropy": 2.0, "agent_step_time_seconds": 0.05}},
        alerts=[AlertInfo("r1", "predicted_loss_spike", "page", "firing"),
                AlertInfo("r1", "preconditioner_decay", "warning", "pending"),
                AlertInfo("r2", "overconfidence", "info", "firing")],
        stats=HealthStats(
            received={"hello": 2, "batch": 40}, invalid={"bad_json": 3, "oversize": 1},
            deduplicated=5, points_written=1234, queue_depth=7,
            write_latency=LatencyHistogram(((0.001, 10), (0.01, 38), (math.inf, 40)), 0.25),
            notifications={("alertmanager", "sent"): 4, ("webhook", "failed"): 1},
            refused_series=2))
    text = generate_latest(build_registry(src, version="1.2.3")).decode()
    fams = _scrape(text)
    for m in EXPORTED:  # every exported metric has a family, with only the run label
        assert f"spikewatch_run_{m}" in fams
        assert all(set(s.labels) == {"run"} for s in fams[f"spikewatch_run_{m}"])
    assert "spikewatch_run_entropy" not in fams  # not exported even though present
    assert _one(fams["spikewatch_run_stability_ratio"], run="r1") == 1.25
    assert math.isnan(_one(fams["spikewatch_run_loss"], run="r1"))
    assert _one(fams["spikewatch_run_rho"], run="r1") == math.inf
    assert _one(fams["spikewatch_run_agent_step_time_seconds"], run="r1") == 0.05
    assert fams["spikewatch_run_grad_norm"] == []  # no value, no sample
    assert [s.labels for s in fams["spikewatch_run_last_step"]] == [{"run": "r1"}]
    assert _one(fams["spikewatch_run_last_step"], run="r1") == 120
    assert _one(fams["spikewatch_run_last_seen_timestamp_seconds"], run="r2") == 1_699_999_999.0
    st = fams["spikewatch_run_alert_state"]
    assert _one(st, run="r1", rule="predicted_loss_spike", severity="page") == 2
    assert _one(st, run="r1", rule="preconditioner_decay", severity="warning") == 1
    assert _one(st, run="r2", rule="overconfidence", severity="info") == 2
    assert _one(fams["spikewatch_active_runs"]) == 2
    assert _one(fams["spikewatch_alerts_firing"], severity="page") == 1
    assert _one(fams["spikewatch_alerts_firing"], severity="warning") == 0
    rec = fams["spikewatch_messages_received"]
    assert {s.name for s in rec} == {"spikewatch_messages_received_total"}
    assert _one(rec, type="batch") == 40
    assert _one(rec, type="hello") == 2
    assert _one(fams["spikewatch_messages_invalid"], reason="bad_json") == 3
    assert _one(fams["spikewatch_messages_deduplicated"]) == 5
    assert _one(fams["spikewatch_points_written"]) == 1234
    assert _one(fams["spikewatch_ingest_queue_depth"]) == 7
    assert _one(fams["spikewatch_notifications"], notifier="webhook", outcome="failed") == 1
    assert _one(fams["spikewatch_refused_series"]) == 2
    lat = fams["spikewatch_write_latency_seconds"]
    assert _one(lat, le="0.01") == 38
    assert _one(lat, le="+Inf") == 40
    assert [s.value for s in lat if s.name.endswith("_count")] == [40]
    assert [s.value for s in lat if s.name.endswith("_sum")] == [0.25]
    assert _one(fams["spikewatch_build_info"], version="1.2.3") == 1
    for samples in fams.values():
        assert all(s.timestamp is None for s in samples)
    assert all(name.startswith("spikewatch_") for name in fams)


def test_only_pending_and_firing_alerts_are_exported() -> None:
    src = MemorySource(runs=[RunInfo("r", 1, 1.0)], alerts=[
        AlertInfo("r", "a", "page", "resolved"), AlertInfo("r", "b", "page", "inactive"),
        AlertInfo("r", "c", "page", "pending")])
    fams = _scrape(generate_latest(build_registry(src)))
    assert [s.labels["rule"] for s in fams["spikewatch_run_alert_state"]] == ["c"]
    assert _one(fams["spikewatch_alerts_firing"], severity="page") == 0


def test_run_cap_bounds_cardinality_and_counts_refused() -> None:
    n, cap = 1000, 200
    src = MemorySource(
        runs=[RunInfo(f"run{i:04d}", i, 1000.0 + i) for i in range(n)],
        values={f"run{i:04d}": dict.fromkeys(EXPORTED, 1.0) for i in range(n)},
        alerts=[AlertInfo(f"run{i:04d}", "predicted_loss_spike", "page", "firing")
                for i in range(0, n, 10)])
    reg = build_registry(src, max_runs=cap)
    fams = _scrape(generate_latest(reg))
    exported = {s.labels["run"] for s in fams["spikewatch_run_last_step"]}
    assert exported == {f"run{i:04d}" for i in range(n - cap, n)}  # the most recently seen
    assert sorted(src.latest_calls) == sorted(exported)  # values read only for exported runs
    for m in EXPORTED:
        assert len(fams[f"spikewatch_run_{m}"]) == cap
    assert len(fams["spikewatch_run_alert_state"]) == cap // 10
    assert _one(fams["spikewatch_active_runs"]) == n
    assert _one(fams["spikewatch_alerts_firing"], severity="page") == n // 10  # all runs
    per_scrape = (n - cap) * (len(EXPORTED) + 2) + (n - cap) // 10
    assert _one(fams["spikewatch_refused_series"]) == per_scrape
    fams = _scrape(generate_latest(reg))  # a counter: it keeps counting
    assert _one(fams["spikewatch_refused_series"]) == 2 * per_scrape
    series = sum(len(v) for v in fams.values())
    assert series < cap * (len(EXPORTED) + 3) + 100


def test_no_refusal_under_the_cap() -> None:
    src = MemorySource(runs=[RunInfo("a", 1, 1.0), RunInfo("b", 2, 2.0)])
    fams = _scrape(generate_latest(build_registry(src, max_runs=2)))
    assert _one(fams["spikewatch_refused_series"]) == 0
    assert len(fams["spikewatch_run_last_step"]) == 2


def test_negative_cap_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_runs"):
        build_registry(MemorySource(), max_runs=-1)


# --- the real source over a Store -----------------------------------------------------------


NOW = 2_000_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path}/exp.db")
    s.upgrade()
    for i, run in enumerate(("fresh", "stale")):
        session = f"{i + 1:032x}"
        hdr = wire.Header(session=session, seq=1, run=run)
        s.write(wire.Batch(hdr, tuple(
            wire.Record(step=st, time=NOW, scalars={
                "loss": math.nan if st == 2 else 1.0, "stability_ratio": 0.5 * st,
                "entropy": 3.0}, layers={"rho": {"fc1": 0.1}})
            for st in range(3))))
    s.save_transitions([
        Transition("predicted_loss_spike", "fresh", Severity.PAGE, AlertState.FIRING, 2, NOW, 1.0),
        Transition("decay", "fresh", Severity.WARNING, AlertState.PENDING, 1, NOW, 0.1),
        Transition("old", "fresh", Severity.INFO, AlertState.PENDING, 0, NOW, 0.1),
        Transition("old", "fresh", Severity.INFO, AlertState.INACTIVE, 1, NOW, 0.1),
        Transition("predicted_loss_spike", "stale", Severity.PAGE, AlertState.FIRING, 2, NOW, 1.0),
    ])
    yield s
    s.close()


def test_store_source_exports_active_runs_only(store: Store) -> None:
    stats = Stats()
    stats.message_received("batch")
    stats.message_invalid("bad_header")
    stats.write_latency(0.003)
    stats.points_written(12)
    seen = {r.name: r.last_seen for r in store.list_runs()}  # wall clock of each write
    gap = seen["stale"] - seen["fresh"]
    assert gap > 0  # "stale" was written last; make "fresh" the one past a tiny window
    src = StoreExportSource(store, stats, active_window_s=gap / 2,
                            clock=lambda: seen["stale"] + gap / 4)
    assert [r.name for r in src.active_runs()] == ["stale"]
    src = StoreExportSource(store, stats, clock=lambda: seen["stale"] + 1.0)
    assert {r.name for r in src.active_runs()} == {"fresh", "stale"}
    fams = _scrape(generate_latest(build_registry(src, version="t")))
    runs = {s.labels["run"] for s in fams["spikewatch_run_last_step"]}
    assert runs == {"fresh", "stale"}
    assert math.isnan(_one(fams["spikewatch_run_loss"], run="fresh"))  # latest is NaN
    assert _one(fams["spikewatch_run_stability_ratio"], run="fresh") == 1.0
    assert _one(fams["spikewatch_run_last_step"], run="fresh") == 2
    assert "spikewatch_run_entropy" not in fams
    assert "spikewatch_run_rho" in fams
    assert fams["spikewatch_run_rho"] == []  # only per-layer rho was sent: no layer labels
    st = {(s.labels["run"], s.labels["rule"]): s.value for s in fams["spikewatch_run_alert_state"]}
    assert st == {("fresh", "predicted_loss_spike"): 2, ("fresh", "decay"): 1,
                  ("stale", "predicted_loss_spike"): 2}
    assert _one(fams["spikewatch_alerts_firing"], severity="page") == 2
    assert _one(fams["spikewatch_messages_received"], type="batch") == 1
    assert _one(fams["spikewatch_messages_received"], type="hello") == 0
    assert _one(fams["spikewatch_messages_invalid"], reason="bad_header") == 1
    assert _one(fams["spikewatch_points_written"]) == 12
    assert _one(fams["spikewatch_write_latency_seconds"], le="0.005") == 1
    assert _one(fams["spikewatch_write_latency_seconds"], le="0.0025") == 0


def test_each_stats_counts_alone_under_the_exported_names(store: Store) -> None:
    one, two = Stats(), Stats()  # two daemons in one process: no shared registry
    one.message_received("hello")
    one.refused_series(3)
    one.unauthenticated()
    one.set_queue_depth(7)
    two.message_received("batch")
    assert one.snapshot().received == {"hello": 1}
    assert two.snapshot().received == {"batch": 1}
    assert (one.snapshot().refused_series, two.snapshot().refused_series) == (3, 0)
    own = {name: samples for name, samples in _scrape(generate_latest(one.registry)).items()
           if not name.endswith("_created")}  # prometheus_client's creation timestamps
    published = _scrape(generate_latest(build_registry(StoreExportSource(store, one))))
    assert set(own) <= set(published)  # Stats names its metrics as the exporter publishes them
    for name in ("spikewatch_refused_series", "spikewatch_messages_unauthenticated",
                 "spikewatch_ingest_queue_depth"):
        assert _one(own[name]) == _one(published[name]), name


def test_store_source_drops_runs_past_the_window(store: Store) -> None:
    seen = max(r.last_seen for r in store.list_runs())
    src = StoreExportSource(store, None, active_window_s=900.0, clock=lambda: seen + 901.0)
    fams = _scrape(generate_latest(build_registry(src)))
    assert fams["spikewatch_run_last_step"] == []
    assert fams["spikewatch_run_alert_state"] == []
    assert _one(fams["spikewatch_active_runs"]) == 0
    assert _one(fams["spikewatch_alerts_firing"], severity="page") == 2  # still counted
    with pytest.raises(ValueError, match="active_window_s"):
        StoreExportSource(store, active_window_s=0)


def test_metrics_endpoint_on_the_api_app(store: Store) -> None:
    reg = build_registry(StoreExportSource(store, Stats(), clock=time.time))
    with TestClient(create_app(store, registry=reg)) as c:
        r = c.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        fams = _scrape(r.text)
        assert {s.labels["run"] for s in fams["spikewatch_run_last_step"]} == {"fresh", "stale"}
        om = c.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.rstrip().endswith("# EOF")
        assert "/metrics" not in c.get("/openapi.json").json()["paths"]
    tokens = Tokens.from_lines([f"{TOKEN} read"])
    with TestClient(create_app(store, registry=reg, tokens=tokens)) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer nope-nope-nope-nope"}
                     ).status_code == 401
        r = c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
        assert "spikewatch_active_runs" in r.text
