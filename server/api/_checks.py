"""Readiness checks for /readyz built from the real Store and the server's Stats."""

from __future__ import annotations

from typing import Protocol

from spikewatch.server._stats import Stats
from spikewatch.server.api._deps import Check


class _Migrated(Protocol):
    def at_head(self) -> bool: ...


def readiness_checks(store: _Migrated, stats: Stats | None = None) -> dict[str, Check]:
    """``database``: reachable and migrated to head; ``collector``: the ingest loop is running."""
    checks: dict[str, Check] = {"database": store.at_head}
    if stats is not None:
        checks["collector"] = lambda: stats.collector_running
    return checks
