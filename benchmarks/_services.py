"""Real services for the reliability benchmarks: the spikewatch daemon as a subprocess
(`spikewatch.server.process`, plus its peak RSS from /proc) and a throw-away PostgreSQL cluster
with durable settings.

PostgreSQL reuses the test suite's `tests.server.conftest.PostgresServer` (initdb as the
`postgres` user when run as root) but starts it with the default fsync / synchronous_commit, so
"acknowledged" means on disk for every system compared.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._rss import peak_rss_bytes  # noqa: E402
from spikewatch.server import process  # noqa: E402
from tests.server.conftest import PG_BIN, PostgresServer  # noqa: E402

__all__ = ["PG_BIN", "DurablePostgres", "ServerProcess", "peak_rss_bytes"]


class DurablePostgres(PostgresServer):
    """`PostgresServer` with PostgreSQL's durable defaults (fsync, synchronous_commit on)."""

    def __init__(self) -> None:
        super().__init__(durable=True)

    @staticmethod
    def available() -> bool:
        return all((PG_BIN / b).exists() for b in ("initdb", "pg_ctl", "postgres"))


class ServerProcess(process.ServerProcess):
    """`spikewatch.server.process.ServerProcess` at log level WARNING, recording its peak RSS."""

    def __init__(self, db: str, workdir: Path, *, zmq_port: int | None = None) -> None:
        super().__init__(db, workdir, zmq_port=zmq_port, env={"SPIKEWATCH_LOG_LEVEL": "WARNING"})
        self.rss_peak = 0

    def sample_rss(self) -> int:
        """Record and return the server's peak RSS so far (bytes)."""
        if self.proc is not None and self.proc.poll() is None:
            self.rss_peak = max(self.rss_peak, peak_rss_bytes(self.proc.pid))
        return self.rss_peak

    def stop(self, timeout: float = process.STOP_TIMEOUT) -> int:
        """Sample the RSS a last time, then stop (SIGTERM, SIGKILL after `timeout`)."""
        self.sample_rss()
        return super().stop(timeout)
