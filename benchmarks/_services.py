"""Real services for the reliability benchmarks: the spikewatch daemon as a subprocess (with its
peak RSS from /proc) and a throw-away PostgreSQL cluster with durable settings.

PostgreSQL reuses the test suite's `tests.server.conftest.PostgresServer` (initdb as the
`postgres` user when run as root) but starts it with the default fsync / synchronous_commit, so
"acknowledged" means on disk for every system compared.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._rss import peak_rss_bytes  # noqa: E402
from tests._net import free_port  # noqa: E402
from tests.server.conftest import PG_BIN, PostgresServer  # noqa: E402

__all__ = ["PG_BIN", "DurablePostgres", "ServerProcess", "free_port", "peak_rss_bytes"]


class DurablePostgres(PostgresServer):
    """`PostgresServer` with PostgreSQL's durable defaults (fsync, synchronous_commit on)."""

    def __init__(self) -> None:
        super().__init__(durable=True)

    @staticmethod
    def available() -> bool:
        return all((PG_BIN / b).exists() for b in ("initdb", "pg_ctl", "postgres"))


class ServerProcess:
    """`spikewatch serve` on free 127.0.0.1 ports; log in `workdir/server.log`."""

    def __init__(self, db: str, workdir: Path, zmq: str | None = None) -> None:
        self.db, self.workdir = db, workdir
        self.zmq = zmq or f"tcp://127.0.0.1:{free_port()}"
        self.http_port = free_port()
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.log = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.rss_peak = 0

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SPIKEWATCH_LOG_LEVEL": "WARNING"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spikewatch.server.cli", "serve", "--db", self.db,
                 "--zmq", self.zmq, "--http-port", str(self.http_port)],
                cwd=self.workdir, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until /readyz answers 200; SystemExit with the log tail if it exits or hangs."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited {self.proc.returncode}: {self.tail()}")
            try:
                if httpx.get(f"{self.http}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"server not ready after {timeout:.0f} s: {self.tail()}")

    def sample_rss(self) -> int:
        """Record and return the server's peak RSS so far (bytes)."""
        if self.proc is not None and self.proc.poll() is None:
            self.rss_peak = max(self.rss_peak, peak_rss_bytes(self.proc.pid))
        return self.rss_peak

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (graceful drain), SIGKILL after `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.sample_rss()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""
