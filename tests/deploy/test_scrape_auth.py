"""deploy/prometheus/prometheus.yml's spikewatch job scrapes a real server that requires API
tokens (as deploy/compose runs it) with the read token `spikewatch keygen` wrote; without the
token the same target is down."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests._net import free_port, program
from tests.deploy.conftest import DEPLOY, start, stop, wait_ready

pytestmark = pytest.mark.prometheus


def _keygen(out: Path) -> None:
    keygen = pytest.importorskip("spikewatch.server._cli_keygen", reason="keygen not importable")
    ap = argparse.ArgumentParser()
    keygen.register(ap.add_subparsers())
    args = ap.parse_args(["keygen", str(out), "--tokens"])
    assert args.func(args) == 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real spikewatch daemon with the generated token file; (its host:port, read.token)."""
    daemon_mod = pytest.importorskip("tests.reliability._daemon")
    root = tmp_path_factory.mktemp("scrape-auth")
    _keygen(root / "keys")
    daemon = daemon_mod.Daemon(f"sqlite:///{root / 'spikewatch.db'}", root,
                               env={"SPIKEWATCH_AUTH__API_TOKENS_FILE":
                                    str(root / "keys" / "api_tokens")})
    daemon.start()
    try:
        daemon.wait_ready()
        yield daemon.http.removeprefix("http://"), root / "keys" / "read.token"
    finally:
        daemon.stop()


def _up(config: dict[str, Any], root: Path) -> float:
    """Run Prometheus on `config` until it has scraped spikewatch once; up{job="spikewatch"}."""
    binary = program("prometheus")
    root.mkdir()
    path = root / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port, log = free_port(), root / "prometheus.log"
    proc = start([binary, f"--config.file={path}", f"--storage.tsdb.path={root / 'data'}",
                  f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/-/ready", proc, log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            body = httpx.get(f"{url}/api/v1/query", params={"query": 'up{job="spikewatch"}'},
                             timeout=5).json()
            if body["data"]["result"]:
                return float(body["data"]["result"][0]["value"][1])
            time.sleep(0.2)
        raise AssertionError("Prometheus never scraped spikewatch")
    finally:
        stop(proc)


def _shipped_job(target: str, token: Path | None) -> dict[str, Any]:
    """The shipped spikewatch scrape job, aimed at `target`, its token file at `token` (or none)."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "spikewatch"]
    assert job["authorization"]["credentials_file"] == "/run/secrets/spikewatch-read-token"
    job["static_configs"] = [{"targets": [target]}]
    job["scrape_interval"] = job["scrape_timeout"] = "1s"
    if token is None:
        del job["authorization"]
    else:
        job["authorization"]["credentials_file"] = str(token)
    return {"global": {"scrape_interval": "1s"}, "scrape_configs": [job]}


def test_the_shipped_scrape_job_reads_metrics_with_the_read_token(
        server: tuple[str, Path], tmp_path: Path) -> None:
    target, token = server
    assert _up(_shipped_job(target, token), tmp_path / "with") == 1.0


def test_without_the_token_the_server_refuses_the_scrape(
        server: tuple[str, Path], tmp_path: Path) -> None:
    target, _ = server
    assert _up(_shipped_job(target, None), tmp_path / "without") == 0.0
