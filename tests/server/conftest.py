"""Server test fixtures: a SQLite store per test and a real PostgreSQL server per test session.

PostgreSQL is started once (initdb into a temporary directory owned by the `postgres` user, since
postgres refuses to run as root) and each test that asks for it gets a fresh database. Tests that
need it are skipped with the reason when the PostgreSQL binaries are missing.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from spikewatch.server.store import Store
from tests._net import free_port

PG_BIN = Path(os.environ.get("SPIKEWATCH_PG_BIN", "/usr/lib/postgresql/15/bin"))




def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PostgresServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1:port (trust auth, user postgres).

    Tests run it with fsync off for speed; benchmarks pass ``durable=True`` for PostgreSQL's
    durable defaults (fsync and synchronous commit on).
    """

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="spikewatch-pg-"))
        self.data, self.sock = self.root / "data", self.root / "sock"
        self.sock.mkdir()
        os.chmod(self.root, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sock, "postgres")
        self.port = free_port()
        self._names = itertools.count()

    def start(self) -> None:
        initdb = [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8"]
        subprocess.run(_as_postgres(initdb if self.durable else [*initdb, "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l",
                                     str(self.root / "log"), "-w", "-t", "60", "-o", opts,
                                     "start"]), check=True, capture_output=True, timeout=90)

    def stop(self) -> None:
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                                     "-w", "-t", "30", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """Create an empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole test session."""
    missing = [b for b in ("initdb", "pg_ctl", "postgres") if not (PG_BIN / b).exists()]
    if missing:
        pytest.skip(f"PostgreSQL binaries missing in {PG_BIN}: {', '.join(missing)}")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (extra 'postgres')")
    server = PostgresServer()
    try:
        server.start()
    except subprocess.CalledProcessError as e:
        log = server.root / "log"
        detail = log.read_text()[-2000:] if log.exists() else e.stderr.decode()[-2000:]
        server.stop()
        pytest.fail(f"PostgreSQL did not start: {detail}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database."""
    return pg_server.new_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file in the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'spikewatch.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'spikewatch.db'}"
    server: PostgresServer = request.getfixturevalue("pg_server")
    return server.new_database()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated Store, on SQLite and on PostgreSQL."""
    s = Store(db_url)
    s.upgrade()
    yield s
    s.close()


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[Store]:
    """A migrated Store on SQLite only."""
    s = Store(sqlite_url)
    s.upgrade()
    yield s
    s.close()
