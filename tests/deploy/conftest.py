"""Fixtures for the deploy tests: the real Prometheus and Alertmanager binaries on 127.0.0.1, and
the real PostgreSQL of tests/server/conftest.py (`pg_server`, one per test session).

Tests needing a program are skipped, with the program named, when it is not installed
(`make system-deps` installs them on Debian).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spikewatch.server.process import spawn as start
from spikewatch.server.process import stop_process as stop
from spikewatch.server.process import wait_http as wait_ready
from tests._net import free_port, program
from tests.server.conftest import PostgresServer, pg_server

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# start(cmd, log), wait_ready(url, proc, log) and stop(proc) run the deploy tests' programs
__all__ = ["DEPLOY", "ROOT", "PostgresServer", "pg_server", "prometheus_url", "start", "stop",
           "wait_ready"]


@pytest.fixture(scope="session")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus with an empty configuration, for running queries."""
    binary = program("prometheus")
    root = tmp_path_factory.mktemp("prometheus")
    config = root / "prometheus.yml"
    config.write_text("global:\n  evaluation_interval: 1m\n", encoding="utf-8")
    port = free_port()
    log = root / "prometheus.log"
    proc = start([binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
                  f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/-/ready", proc, log)
        yield url
    finally:
        stop(proc)
