"""`spikewatch tail RUN` through the real CLI: one reading (table and JSON) from a SQLite database
and from a real `spikewatch serve`, the two alike; a live view that survives a server that is down
and shows the run once the server is up; Ctrl-C ends it with status 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spikewatch.server.process import ServerProcess, free_port
from tests.server._cli import ROOT, SOURCE_ENVS, spikewatch
from tests.server._cli_runs import READ, new_db, server


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_db(tmp_path_factory.mktemp("tail") / "tail.db", ["tiny-run"])


@pytest.fixture(scope="module")
def srv(db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with server(db, tmp_path_factory.mktemp("tail-srv")) as s:
        yield s


def _json(*args: str) -> dict[str, object]:
    r = spikewatch("tail", *args, "--once", "--json")
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout)
    return out


def test_once_json_from_a_database_has_the_latest_signals_and_open_alerts(db: Path) -> None:
    doc = _json("tiny-run", "--db", str(db))
    assert doc["signals"] == {"loss": 2.5, "stability_ratio_two_secant": 1.25,
                              "rho_sampled": 0.03, "sa_sign_diversity": 0.4,
                              "grad_norm": "Infinity", "agent_overhead": 0.012,
                              "guard_active": 1.0}
    alerts = doc["alerts"]
    assert isinstance(alerts, list)
    assert [(a["rule"], a["state"]) for a in alerts] == [
        ("predicted_loss_spike", "firing"), ("loss_spike", "pending")]  # resolved ones left out
    run = doc["run"]
    assert isinstance(run, dict)
    assert (run["name"], run["last_step"], run["firing_alerts"]) == ("tiny-run", 50, 1)


def test_once_through_a_real_server_reads_the_same(db: Path, srv: ServerProcess) -> None:
    api = _json("tiny-run", "--url", srv.http, "--token", READ)
    local = _json("tiny-run", "--db", str(db))
    assert api["signals"] == local["signals"]
    assert api["alerts"] == local["alerts"]
    r = spikewatch("tail", "tiny-run", "--once", "--url", srv.http, "--token", READ)
    assert r.returncode == 0, r.stderr
    for text in ("stability ratio (two-secant)", "stability_ratio_two_secant", "1.25",
                 "ρ (sampled)", "0.03", "sign diversity", "inf", "guard active",
                 "predicted_loss_spike", "firing", "loss_spike", "pending"):
        assert text in r.stdout, text
    assert "overconfidence" not in r.stdout


def test_once_reports_what_it_cannot_read(db: Path, srv: ServerProcess) -> None:
    r = spikewatch("tail", "no-such-run", "--once", "--db", str(db))
    assert (r.returncode, r.stderr.strip()) == (1, "spikewatch: no run named 'no-such-run'")
    r = spikewatch("tail", "tiny-run", "--once", "--url", srv.http)  # no token
    assert r.returncode == 1
    assert "requires a bearer token" in r.stderr
    r = spikewatch("tail", "tiny-run", "--once", "--url", f"http://127.0.0.1:{free_port()}",
                   "--timeout", "2")
    assert r.returncode == 1
    assert "cannot reach" in r.stderr
    assert "Traceback" not in r.stderr
    r = spikewatch("tail", "tiny-run", "--json", "--db", str(db))
    assert r.returncode == 2
    assert "--json needs --once" in r.stderr
    r = spikewatch("tail", "tiny-run", "--interval", "0", "--db", str(db))
    assert r.returncode == 2
    assert "positive" in r.stderr


class _Lines:
    """A child's output, read by a thread as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.text = ""
        assert proc.stdout is not None
        self._stream = proc.stdout
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self.text += line

    def close(self) -> None:
        """After the child ended: the rest of its output, and the pipe closed."""
        self._thread.join(timeout=10)
        self._stream.close()

    def wait_for(self, text: str, after: int = 0, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while (at := self.text.find(text, after)) < 0:
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.text[-2000:]}"
            time.sleep(0.05)
        return at


def test_live_view_waits_for_a_server_that_is_down_then_shows_the_run(
        db: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SOURCE_ENVS}
    env.update(PYTHONPATH=str(ROOT), SPIKEWATCH_API_TOKEN=READ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "spikewatch.server.cli", "tail", "tiny-run", "--url",
         f"http://127.0.0.1:{port}", "--interval", "0.3", "--timeout", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        env=env, cwd=ROOT)
    out = _Lines(proc)
    try:
        down = out.wait_for("cannot reach")
        out.wait_for("trying again every 0.3 s", down)
        with server(db, tmp_path / "srv", http_port=port):
            up = out.wait_for("stability_ratio_two_secant", down)
            out.wait_for("predicted_loss_spike", up)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
    assert "Traceback" not in out.text
