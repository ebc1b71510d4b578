"""Retention and downsampling: thin old rows per series kind, drop very old ones, delete runs.

For each kind, rows older than `thin_after_days` keep one row per bucket of `keep_every` steps
(the earliest of each series in the bucket); rows older than `drop_after_days` are deleted.
Incomplete partial sums (a rank never reported) are dropped after `partials_max_age_hours`.
`delete_runs` removes whole runs: every table refers to ``runs`` with ON DELETE CASCADE, so a
run's sessions, series, histograms, events, alerts, partial sums and latest values go with it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, and_, delete, func, select
from sqlalchemy.engine import Connection

from spikewatch.server.store import _models as m

DAY = 86400.0
_NAMES_PER_STATEMENT = 500  # under SQLite's limit on bound parameters


@dataclass(frozen=True, slots=True)
class KindPolicy:
    """How one kind of series ages. `keep_every` 1 = never thin; None days = never."""

    keep_every: int = 1
    thin_after_days: float | None = None
    drop_after_days: float | None = None

    def __post_init__(self) -> None:
        if self.keep_every < 1:
            raise ValueError("keep_every must be ≥ 1")


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Per-kind policies (defaults: scalars and events kept; layers and histograms thinned)."""

    scalars: KindPolicy = field(default_factory=KindPolicy)
    layers: KindPolicy = field(default_factory=lambda: KindPolicy(10, 7.0, None))
    histograms: KindPolicy = field(default_factory=lambda: KindPolicy(10, 3.0, None))
    events: KindPolicy = field(default_factory=KindPolicy)
    partials_max_age_hours: float = 24.0


def _series_cols(t: Table) -> list[Any]:
    cols: list[Any] = [t.c.run_id, t.c.rank]
    if "metric" in t.c:
        cols.append(t.c.metric)
    if "layer" in t.c:
        cols.append(t.c.layer)
    if "type" in t.c:
        cols.append(t.c.type)
    return cols


def _apply(conn: Connection, t: Table, p: KindPolicy, now: float) -> int:
    n = 0
    if p.drop_after_days is not None:
        n += conn.execute(delete(t).where(t.c.time < now - p.drop_after_days * DAY)).rowcount
    if p.keep_every > 1 and p.thin_after_days is not None:
        cutoff = now - p.thin_after_days * DAY
        keep = (select(func.min(t.c.id)).where(t.c.time < cutoff)
                .group_by(*_series_cols(t), t.c.step // p.keep_every))
        n += conn.execute(delete(t).where(and_(t.c.time < cutoff,
                                               t.c.id.not_in(keep.scalar_subquery())))).rowcount
    return n


def apply_retention(conn: Connection, policy: RetentionPolicy, now: float | None = None
                    ) -> dict[str, int]:
    """Apply a policy inside a transaction; the number of rows deleted per kind."""
    now = time.time() if now is None else now
    out = {
        "scalars": _apply(conn, m.scalars, policy.scalars, now),
        "layers": _apply(conn, m.layer_values, policy.layers, now),
        "histograms": _apply(conn, m.histograms, policy.histograms, now),
        "events": _apply(conn, m.events, policy.events, now),
    }
    out["partials"] = conn.execute(delete(m.partials).where(
        m.partials.c.time < now - policy.partials_max_age_hours * 3600.0)).rowcount
    return out


def delete_runs(conn: Connection, names: Sequence[str]) -> int:
    """Delete the named runs with all their data inside a transaction; how many existed."""
    n = 0
    unique = sorted(set(names))
    for i in range(0, len(unique), _NAMES_PER_STATEMENT):
        chunk = unique[i:i + _NAMES_PER_STATEMENT]
        n += conn.execute(delete(m.runs).where(m.runs.c.name.in_(chunk))).rowcount
    return n
