"""`spikewatch.server.process`: the server as a child process, started, killed, restarted on the
same ports, stopped and reaped; failures carry the log's tail."""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from spikewatch.server.process import (
    NotReadyError,
    ServerProcess,
    free_port,
    spawn,
    stop_process,
    wait_http,
)


@pytest.mark.slow
def test_ready_sigkill_restart_on_the_same_ports_and_stop_reaps(sqlite_url: str,
                                                               tmp_path: Path) -> None:
    server = ServerProcess(sqlite_url, tmp_path, env={"SPIKEWATCH_LOG_LEVEL": "INFO"})
    http, zmq = server.http, server.zmq
    with server:
        assert httpx.get(server.metrics_url, timeout=5).status_code == 200
        assert httpx.get(f"{server.api_url}/runs", timeout=5).json() == []
        first = server.proc
        assert server.kill() == -signal.SIGKILL
        assert first is not None
        assert first.returncode == -signal.SIGKILL  # reaped
        server.start()
        server.wait_ready()
        assert (server.http, server.zmq, server.starts) == (http, zmq, 2)
        assert server.proc is not first
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
    assert server.proc is not None
    assert server.proc.returncode == 0  # SIGTERM: a clean exit
    assert not server.running
    assert free_port(preferred=server.http_port) == server.http_port  # the port is let go
    assert server.tail().count("shutting down") == 1  # the killed one had no goodbye


def test_a_failed_start_raises_with_the_log_tail(tmp_path: Path) -> None:
    server = ServerProcess(f"sqlite:///{tmp_path / 'x.db'}", tmp_path,
                           rules=tmp_path / "no-such-rules.yaml")
    failed = r"(?s)spikewatch serve exited with 1; last lines of .*cannot read rule file"
    with pytest.raises(NotReadyError, match=failed), server:
        pass
    assert server.proc is not None
    assert server.proc.returncode == 1


def test_a_program_that_never_answers_times_out_and_is_reaped(tmp_path: Path) -> None:
    log = tmp_path / "sleeper.log"
    proc = spawn([sys.executable, "-c", "print('still booting', flush=True); "
                  "import time; time.sleep(60)"], log)
    try:
        t0 = time.monotonic()
        with pytest.raises(NotReadyError, match=r"(?s)not ready after 1 s.*still booting"):
            wait_http(f"http://127.0.0.1:{free_port()}/", proc, log, timeout=1.0)
        assert time.monotonic() - t0 < 10
    finally:
        assert stop_process(proc, timeout=10) == -signal.SIGTERM
    assert proc.returncode == -signal.SIGTERM


def test_stop_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    proc = spawn([sys.executable, "-c", "import signal, time; "
                  "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                  "time.sleep(60)"], log)
    deadline = time.monotonic() + 30
    while "ready" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stop_process(proc, timeout=0.5) == -signal.SIGKILL


def test_free_port_keeps_a_free_preference_and_avoids_a_taken_one() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        other = free_port(preferred=port)
        assert other != port
    assert free_port(preferred=other) == other
