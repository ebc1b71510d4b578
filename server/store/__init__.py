"""The SQL store: runs, agent sessions, series, histograms, events and alerts.

`Store(url)` works over SQLite (``sqlite:///spikewatch.db``) or PostgreSQL
(``postgresql+psycopg://...``); `Store.upgrade()` migrates the schema to the newest revision.
"""

from spikewatch.server.store._retention import KindPolicy, RetentionPolicy
from spikewatch.server.store._store import Store, alembic_config
from spikewatch.server.store.reads import StoreReads
from spikewatch.server.store.rows import (
    GLOBAL_RANK,
    AlertRow,
    EventRow,
    HistRow,
    Point,
    RunRow,
    WriteResult,
)

__all__ = [
    "GLOBAL_RANK",
    "AlertRow",
    "EventRow",
    "HistRow",
    "KindPolicy",
    "Point",
    "RetentionPolicy",
    "RunRow",
    "Store",
    "StoreReads",
    "WriteResult",
    "alembic_config",
]
