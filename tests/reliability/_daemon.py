"""The real spikewatch daemon (`spikewatch serve`) as a subprocess on fixed ports.

The ports are chosen once, so the daemon can be killed and restarted on the same endpoints while
agents keep their connection target.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests._net import free_port

ROOT = Path(__file__).resolve().parents[2]




class Daemon:
    """`spikewatch serve` on 127.0.0.1; stdout and stderr go to `log` (appended per start)."""

    def __init__(self, db: str, workdir: Path, *, config: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.db, self.workdir, self.config = db, workdir, config
        self.zmq_port, self.http_port = free_port(), free_port()
        self.zmq = f"tcp://127.0.0.1:{self.zmq_port}"
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.log = workdir / "server.log"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start the process (not waiting for readiness)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        cmd = [sys.executable, "-m", "spikewatch.server.cli", "serve", "--db", self.db,
               "--zmq", self.zmq, "--http-port", str(self.http_port)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        self.starts += 1

    def wait_ready(self, timeout: float = 60.0, headers: dict[str, str] | None = None) -> None:
        """Wait until /readyz answers 200; fails with the log if the process exits or hangs."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.tail()}")
            try:
                r = httpx.get(f"{self.http}/readyz", timeout=1.0, headers=headers)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready after {timeout} s: {self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait (SIGKILL if it does not exit); the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"no exit after SIGTERM: {self.tail()}") from None

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""
