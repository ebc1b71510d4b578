"""Database engines: URL handling, SQLite pragmas and lock semantics, retryable-error detection.

SQLite gets WAL, a busy timeout, synchronous=NORMAL and foreign keys in a connect listener. The
write engine starts every transaction with BEGIN IMMEDIATE (it takes the write lock up front, so a
busy database makes it wait or fail before anything is done, never half-way); readers use plain
BEGIN and, under WAL, never block the writer.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError

_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57P01", "08006", "08003"})


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_engine(url: URL, busy_timeout_ms: int, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


def make_engines(url: str, *, busy_timeout_ms: int = 5000) -> tuple[Engine, Engine]:
    """(read engine, write engine) for a database URL; the same engine twice except for SQLite."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return (_sqlite_engine(u, busy_timeout_ms, immediate=False),
                _sqlite_engine(u, busy_timeout_ms, immediate=True))
    engine = create_engine(u, pool_pre_ping=True)
    return engine, engine


def is_retryable(exc: BaseException) -> bool:
    """True for transient failures worth retrying: a locked SQLite database, a PostgreSQL
    serialization failure or deadlock, a dropped connection."""
    if isinstance(exc, OperationalError):
        text = str(exc.orig).lower()
        if "locked" in text or "busy" in text:
            return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        code = getattr(exc.orig, "sqlstate", None)
        return code in _RETRYABLE_SQLSTATES
    return False
