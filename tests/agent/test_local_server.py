"""`attach(endpoint="local")`: a real `spikewatch serve` started beside the job (SQLite in
./spikewatch-local), detached, reused by the next job, restarted over a stale pid file; the data
read back through its HTTP API. Every server a test started is killed from its pid file after the
test, and checked gone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import zmq

import spikewatch
from spikewatch.agent import _local_server
from spikewatch.agent._config import ConfigError
from spikewatch.agent._local_server import ServerExtraMissingError

FOLDER = "spikewatch-local"
STEPS = 12


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _gone(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):  # our child: reap it
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _kill(pid: int) -> None:
    """SIGTERM (SIGKILL after 20 s) a server this test started; fails if it is still there."""
    if pid == os.getpid() or b"spikewatch.server.cli" not in _cmdline(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20.0
    while not _gone(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
        time.sleep(0.05)


@pytest.fixture
def job_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A job's working directory; afterwards the local server of every pid file is killed."""
    monkeypatch.chdir(tmp_path)
    for name in ("SPIKEWATCH_ENDPOINT", "SPIKEWATCH_LOCAL_DIR", "SPIKEWATCH_SERVER_KEY",
                 "SPIKEWATCH_DISABLED", "SPIKEWATCH_RUN"):
        monkeypatch.delenv(name, raising=False)
    started: list[int] = []
    monkeypatch.setattr(_local_server, "_spawn", _recording(_local_server._spawn, started))
    try:
        yield tmp_path
    finally:
        pids = {int(p.read_text()) for p in tmp_path.rglob("server.pid")} | set(started)
        for pid in pids:
            _kill(pid)
        assert all(_gone(pid) for pid in pids)


def _recording(spawn: Any, started: list[int]) -> Any:
    def spawn_and_record(files: Any) -> Any:
        server = spawn(files)
        started.append(server.pid)
        return server
    return spawn_and_record


def _train(run: str, **options: Any) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 6), torch.randn(16, 1)
    with spikewatch.attach(model, opt, run=run, **options) as monitor:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            monitor.log(loss=loss)


def _state(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "server.json").read_text()))


def _losses(http: str, run: str, timeout: float = 20.0) -> list[float]:
    """The run's stored loss series, read through the API once all STEPS points are there."""
    deadline, points = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        r = httpx.get(f"{http}/api/v1/runs/{run}/series", params={"metric": "loss"}, timeout=5)
        if r.status_code == 200 and len(points := r.json()["points"]) >= STEPS:
            break
        time.sleep(0.2)
    return [float(p["value"]) for p in points]


@pytest.mark.slow
def test_attach_local_starts_a_detached_server_and_the_next_job_reuses_it(
        job_dir: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _train("local-1", endpoint="local")
    folder = job_dir / FOLDER
    first = _state(folder)
    assert (folder / "spikewatch.db").is_file()
    assert (folder / "server.log").is_file()
    assert int((folder / "server.pid").read_text()) == first["pid"]
    assert os.getsid(first["pid"]) == first["pid"]  # its own session: outlives the job's
    assert first["db"] == f"sqlite:///{folder / 'spikewatch.db'}"
    assert len(_losses(first["http"], "local-1")) == STEPS
    err = capfd.readouterr().err
    page = re.escape(f"{first['http']}/runs/local-1")
    assert re.search(rf"^spikewatch: run page {page} \(local server pid {first['pid']}, started; "
                     rf"stop it with: kill \$\(cat {re.escape(str(folder))}/server.pid\)\)$",
                     err, re.M), err

    monkeypatch.setenv("SPIKEWATCH_ENDPOINT", "local")  # the variable, not the argument
    _train("local-2")
    assert _state(folder) == first  # the same server (pid, ports, database)
    assert len(_losses(first["http"], "local-2")) == STEPS
    assert f"run page {first['http']}/runs/local-2 (local server pid {first['pid']}, reusing" \
        in capfd.readouterr().err


def _exited_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("stale", ["exited", "another program"])
def test_a_stale_pid_file_is_replaced_by_a_new_server(
        job_dir: Path, stale: str, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = job_dir / "elsewhere"
    folder.mkdir()
    pid = _exited_pid() if stale == "exited" else os.getpid()  # pytest holds the pid now
    (folder / "server.json").write_text(json.dumps({
        "pid": pid, "zmq": "tcp://127.0.0.1:9", "http": "http://127.0.0.1:9",
        "db": "sqlite:///x.db", "log": "x.log"}))
    (folder / "server.pid").write_text(f"{pid}\n")
    monkeypatch.setenv("SPIKEWATCH_LOCAL_DIR", str(folder))
    _train("after-stale", endpoint="local")
    new = _state(folder)
    assert new["pid"] != pid
    assert int((folder / "server.pid").read_text()) == new["pid"]
    assert len(_losses(new["http"], "after-stale")) == STEPS


def test_without_the_server_extra_attach_names_the_install_command(
        job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fastapi" else real(name, *a))
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ServerExtraMissingError, match=r"pip install 'spikewatch\[server\]'"):
        spikewatch.attach(model, torch.optim.Adam(model.parameters()), endpoint="local")
    assert not (job_dir / FOLDER).exists()  # nothing started, nothing written


def test_local_refuses_curve_keys_and_a_disabled_monitor_starts_nothing(job_dir: Path) -> None:
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters())
    server_public, _ = zmq.curve_keypair()
    _, client_secret = zmq.curve_keypair()
    with pytest.raises(ConfigError, match="without CURVE"):
        spikewatch.attach(model, opt, endpoint="local", server_key=server_public.decode(),
                          client_secret_key=client_secret.decode())
    spikewatch.attach(model, opt, endpoint="local", enabled=False).close()
    assert not (job_dir / FOLDER).exists()


@pytest.mark.slow
def test_jobs_starting_at_once_share_one_server(job_dir: Path) -> None:
    folder = job_dir / FOLDER
    with ThreadPoolExecutor(3) as pool:  # each holds its own lock handle, like separate jobs
        endpoints = list(pool.map(lambda run: _local_server.local_endpoint(folder, run),
                                  ["a", "b", "c"]))
    assert len(set(endpoints)) == 1
    assert endpoints[0] == _state(folder)["zmq"]
    assert (folder / "server.log").read_text().count(" started by pid ") == 1
