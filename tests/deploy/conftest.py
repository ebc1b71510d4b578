"""Fixtures for the deploy tests: the real Prometheus and Alertmanager binaries on 127.0.0.1.

Tests needing a program are skipped, with the program named, when it is not installed
(`make system-deps` installs them on Debian).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests._net import free_port, program

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"






def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a program with its output going to `log` (a file: a full pipe would block it)."""
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    """Poll `url` until it answers 200; fail with the program's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{out}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout} s:\n{log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a started program, killing it if it does not exit within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


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
