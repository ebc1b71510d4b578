"""`spikewatch serve` as a child process: on free 127.0.0.1 ports, ready once /readyz answers,
stopped with SIGTERM then SIGKILL and always reaped; its output goes to a log file whose last lines
come with every failure.

For the demo, the benchmarks and the tests. The pieces that know nothing of spikewatch (`free_port`,
`spawn`, `wait_http`, `stop_process`) also run the tests' Prometheus and Alertmanager; the command
line, environment, ports and log tail are the protocol's (`spikewatch.protocol.launch`), which the
agent's local mode launches with too.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from spikewatch.protocol.launch import HOST, child_env, free_port, log_tail, serve_command

__all__ = ["NotReadyError", "ServerProcess", "free_port", "log_tail", "spawn", "stop_process",
           "wait_http"]

READY_TIMEOUT = 90.0  # seconds until /readyz: migrations on a cold PostgreSQL on a busy machine
STOP_TIMEOUT = 60.0  # seconds of graceful drain after SIGTERM before SIGKILL
REAP_TIMEOUT = 30.0  # seconds for a SIGKILLed process to be gone
POLL_S = 0.1


class NotReadyError(RuntimeError):
    """A program exited, or did not become ready in time; the message ends with its log's tail."""


def spawn(cmd: Sequence[str], log: Path, *, cwd: Path | None = None,
          env: Mapping[str, str] | None = None, append: bool = False,
          own_session: bool = False) -> subprocess.Popen[bytes]:
    """Start `cmd` with stdout and stderr going to `log` (a file: a full pipe would block it).

    `own_session`: a terminal's Ctrl-C reaches only the caller, which then stops the child."""
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                                start_new_session=own_session)


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path,
              timeout: float = READY_TIMEOUT, name: str | None = None) -> None:
    """Poll `url` until it answers 200; NotReadyError with the log's tail if `proc` (called
    `name` in the message) exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            who = name or repr(proc.args)
            raise NotReadyError(f"{who} exited with {proc.returncode}; last lines of {log}:\n"
                                f"{log_tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(POLL_S)
    raise NotReadyError(f"{url} not ready after {timeout:.0f} s; last lines of {log}:\n"
                        f"{log_tail(log)}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, SIGKILL if it has not exited after `timeout` seconds; its exit status once reaped
    (negative: the signal that ended it)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(REAP_TIMEOUT)


class ServerProcess:
    """`spikewatch serve` on 127.0.0.1, run in `workdir`, restartable on its ports and database.

    Ports not given are picked free when it is made, so its endpoints are known before it starts
    and stay the same across `kill` and `start`: agents can be pointed at it beforehand. `db` None
    is the server's default (SQLite `spikewatch.db` in `workdir`). `log` (default
    `workdir/server.log`) holds the output of its starts, one after another. The server's settings
    come only from the arguments: SPIKEWATCH_* variables are not inherited, `env` is added. As a
    context manager it starts, waits until ready and stops.
    """

    def __init__(self, db: str | None, workdir: Path, *, zmq_port: int | None = None,
                 http_port: int | None = None, config: Path | None = None,
                 rules: Path | None = None, env: Mapping[str, str] | None = None,
                 args: Sequence[str] = (), log: Path | None = None,
                 own_session: bool = False) -> None:
        self.db, self.workdir = db, workdir
        self.zmq_port = zmq_port if zmq_port is not None else free_port()
        self.http_port = http_port if http_port is not None else free_port()
        self.zmq = f"tcp://{HOST}:{self.zmq_port}"  # where agents connect
        self.metrics_target = f"{HOST}:{self.http_port}"  # as Prometheus scrapes it
        self.http = f"http://{self.metrics_target}"  # /readyz, /metrics, /docs
        self.api_url, self.metrics_url = f"{self.http}/api/v1", f"{self.http}/metrics"
        self.log = log if log is not None else workdir / "server.log"
        files = [*(["--config", str(config.resolve())] if config is not None else []),
                 *(["--rules", str(rules.resolve())] if rules is not None else [])]
        self.command = serve_command(self.zmq, self.http_port, db, [*files, *args])
        self.env = child_env(env)
        self.own_session = own_session
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the process (not waiting until it is ready)."""
        if self.running:
            raise RuntimeError(f"spikewatch serve is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = spawn(self.command, self.log, cwd=self.workdir, env=self.env,
                          append=self.starts > 0, own_session=self.own_session)
        self.starts += 1

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("spikewatch serve was not started")
        return self.proc.pid

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until /readyz answers 200 (migrated, collecting); NotReadyError with the log's tail if
        it exits or `timeout` seconds pass."""
        if self.proc is None:
            raise RuntimeError("spikewatch serve was not started")
        wait_http(f"{self.http}/readyz", self.proc, self.log, timeout, "spikewatch serve")

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> int:
        """Send `sig` (default SIGKILL: no drain) and wait until it is gone; its exit status."""
        if self.proc is None:
            raise RuntimeError("spikewatch serve was not started")
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(REAP_TIMEOUT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (graceful drain: what was acknowledged is stored), SIGKILL after `timeout`
        seconds; the exit status (0 if it never started)."""
        return 0 if self.proc is None else stop_process(self.proc, timeout)

    def tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the log."""
        return log_tail(self.log, lines)

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
