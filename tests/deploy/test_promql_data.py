"""Dashboard and recording-rule queries return data from spikewatch's real exporter.

The server's Prometheus collector (server.exporter) is served on 127.0.0.1 with an in-memory data
source in place of the store (its injection seam), a real Prometheus scrapes it every second and
evaluates the shipped rule files, and every dashboard expression and recording rule must return at
least one series. This catches a metric or label name that differs from what the exporter emits.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx
import pytest
from prometheus_client import start_http_server

from spikewatch.protocol.names import EXPORTED
from spikewatch.server.exporter import (
    AlertInfo,
    HealthStats,
    LatencyHistogram,
    RunInfo,
    build_registry,
)
from tests._net import free_port, program
from tests.deploy.conftest import DEPLOY, start, stop, wait_ready
from tests.deploy.promql import all_expressions, concrete, rule_expressions

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]
RULES = DEPLOY / "prometheus" / "rules" / "spikewatch-server.rules.yml"


class _Source:
    """Two active runs, a firing page and a pending warning; counters that grow on every scrape."""

    def __init__(self) -> None:
        self.scrapes = 0
        self.lock = threading.Lock()

    def active_runs(self) -> Sequence[RunInfo]:
        now = time.time()
        return [RunInfo("demo", 120, now), RunInfo("other", 40, now - 30)]

    def latest(self, run: str) -> Mapping[str, float]:
        base = {m: 0.5 for m in EXPORTED}
        return {**base, "stability_ratio": 1.2 if run == "demo" else 0.4, "phase": 3.0}

    def open_alerts(self) -> Sequence[AlertInfo]:
        return [AlertInfo("demo", "predicted_loss_spike", "page", "firing"),
                AlertInfo("other", "stability_edge_crossing", "warning", "pending")]

    def health(self) -> HealthStats:
        with self.lock:
            self.scrapes += 1
            n = float(self.scrapes)
        return HealthStats(
            received={"hello": n, "batch": 10 * n}, invalid={"bad_json": n},
            deduplicated=n, points_written=1000 * n,
            write_latency=LatencyHistogram(
                ((0.01, 5 * n), (0.1, 9 * n), (math.inf, 10 * n)), 0.3 * n),
            queue_depth=3.0, notifications={("alertmanager", "sent"): n,
                                            ("alertmanager", "failed"): n},
            refused_series=n)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Prometheus that scrapes the exporter and evaluates deploy/prometheus/rules."""
    binary = program("prometheus")
    registry = build_registry(_Source(), version="0.0.test")
    port = free_port()
    httpd, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    root: Path = tmp_path_factory.mktemp("prometheus-scrape")
    config = root / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {DEPLOY / 'prometheus' / 'rules'}/*.rules.yml\n"
        "scrape_configs:\n  - job_name: spikewatch\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{port}']\n", encoding="utf-8")
    prom_port, log = free_port(), root / "prometheus.log"
    proc = start([binary, f"--config.file={config}",
                  f"--storage.tsdb.path={root / 'data'}",
                  f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"], log)
    url = f"http://127.0.0.1:{prom_port}"
    try:
        wait_ready(f"{url}/-/ready", proc, log)
        yield url
    finally:
        stop(proc)
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _series(client: httpx.Client, expr: str) -> int:
    body = client.get("/api/v1/query", params={"query": expr}).json()
    assert body["status"] == "success", body
    return len(body["data"]["result"])


def test_dashboards_and_recording_rules_return_data(scraped: str) -> None:
    alerts = {t for f, t, _ in rule_expressions(RULES)}
    alerts -= {r for r in alerts if ":" in r}  # recording rules stay
    # Alert expressions return data only when the server is unhealthy: promtool tests them.
    wanted = [(f, t, concrete(e)) for f, t, e in all_expressions() if t not in alerts]
    assert len(wanted) >= 50
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=scraped, timeout=10) as client:
        while True:
            empty = [f"{f} :: {t}: {e}" for f, t, e in wanted if _series(client, e) == 0]
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    assert not empty, "no data for:\n" + "\n".join(empty)


def test_run_label_selects_one_run(scraped: str) -> None:
    with httpx.Client(base_url=scraped, timeout=10) as client:
        assert _series(client, 'spikewatch_run_stability_ratio{run="demo"}') == 1
        assert _series(client, 'spikewatch_run_stability_ratio{run="nope"}') == 0
