"""The Store: one object over a SQL database (SQLite or PostgreSQL) for ingest and reads."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from spikewatch import migrations
from spikewatch.protocol import wire
from spikewatch.server.store._alerts import save_transitions as _save_transitions
from spikewatch.server.store._engine import is_retryable, make_engines
from spikewatch.server.store._reader import Reader
from spikewatch.server.store._retention import RetentionPolicy, apply_retention, delete_runs
from spikewatch.server.store._writer import Txn
from spikewatch.server.store.rows import WriteResult
from spikewatch.server.types import Transition

log = logging.getLogger(__name__)
T = TypeVar("T")


def alembic_config(url: str) -> Config:
    """An Alembic config for `url` that works from an installed package (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


class Store(Reader):
    """SQL store of runs, series, histograms, events and alerts.

    `url`: ``sqlite:///path.db`` or ``postgresql+psycopg://user@host:port/db``. Writes are
    transactional and deduplicated per (agent session, seq); a write returns only after commit.
    A transient failure (locked SQLite database, PostgreSQL serialization failure) is retried up to
    `retries` times with backoff, then raised: nothing is reported written that was not committed.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 5000, retries: int = 8,
                 active_window_s: float = 900.0) -> None:
        self.url = url
        read, write = make_engines(url, busy_timeout_ms=busy_timeout_ms)
        super().__init__(read, active_window_s)
        self._write = write
        self._retries = retries
        self._run_ids: dict[str, int] = {}
        self._lock = threading.Lock()  # one writer at a time in this process

    # --- schema --------------------------------------------------------------------------------

    def upgrade(self, revision: str = "head") -> None:
        """Run Alembic migrations up to `revision`."""
        with self._write.connect() as conn:
            cfg = alembic_config(self.url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()

    def downgrade(self, revision: str) -> None:
        """Run Alembic migrations down to `revision` ("base" drops everything)."""
        with self._write.connect() as conn:
            cfg = alembic_config(self.url)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
            conn.commit()
        self._run_ids.clear()

    def current(self) -> str | None:
        """The database's migration revision (None before the first upgrade)."""
        with self._read.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def at_head(self) -> bool:
        """True when the database is migrated to the newest revision."""
        head = ScriptDirectory.from_config(alembic_config(self.url)).get_current_head()
        return self.current() == head

    # --- writes --------------------------------------------------------------------------------

    def _transact(self, fn: Callable[[Txn], T]) -> T:
        delay = 0.01
        for attempt in range(self._retries + 1):
            try:
                with self._lock, self._write.begin() as conn:
                    txn = Txn(conn, self._run_ids)
                    out = fn(txn)
                    txn.finish()
                self._run_ids.update(txn.new_run_ids)
                return out
            except Exception as e:
                if attempt >= self._retries or not is_retryable(e):
                    raise
                log.warning("store busy (%s); retry %d/%d", type(e).__name__, attempt + 1,
                            self._retries)
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    def write_many(self, msgs: Sequence[wire.Hello | wire.Batch]) -> list[WriteResult]:
        """Write several messages in one transaction; one result per message, after commit."""
        return self._transact(lambda txn: [txn.message(msg) for msg in msgs])

    def write(self, msg: wire.Hello | wire.Batch) -> WriteResult:
        """Write one message (idempotent per session and seq); returns after commit."""
        return self.write_many([msg])[0]

    def save_transitions(self, transitions: Sequence[Transition]) -> None:
        """Persist alert state changes (see `_alerts`)."""
        if transitions:
            self._transact(lambda txn: _save_transitions(txn, transitions))

    def apply_retention(self, policy: RetentionPolicy, now: float | None = None
                        ) -> dict[str, int]:
        """Thin and drop old rows per the policy; rows deleted per kind."""
        def run(txn: Txn) -> dict[str, int]:
            return apply_retention(txn.conn, policy, now)
        return self._transact(run)

    def delete_runs(self, names: Sequence[str]) -> int:
        """Delete runs with all their data (see `_retention.delete_runs`); how many existed. A
        later message for a deleted run's name starts a new run."""
        def run(txn: Txn) -> int:
            for name in names:  # under the writer lock: no write reuses a deleted run's id
                self._run_ids.pop(name, None)
            return delete_runs(txn.conn, names)
        return self._transact(run)

    def connection(self) -> Connection:
        """A read connection (for tools that need raw SQL; close it)."""
        return self._read.connect()

    def close(self) -> None:
        """Release every database connection."""
        self._read.dispose()
        if self._write is not self._read:
            self._write.dispose()
