"""Read queries of the store (runs, series, histograms, events, alerts, latest values)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, select, union
from sqlalchemy.engine import Engine

from spikewatch.server.store import _models as m
from spikewatch.server.store._codec import dec, loads
from spikewatch.server.store.reads import StoreReads
from spikewatch.server.store.rows import GLOBAL_RANK, AlertRow, EventRow, HistRow, Point, RunRow

MAX_LIMIT = 1_000_000


def _steps(col: Any, step_min: int | None, step_max: int | None) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if step_min is not None:
        out.append(col >= step_min)
    if step_max is not None:
        out.append(col <= step_max)
    return out


def _limit(limit: int) -> int:
    if limit < 0:
        raise ValueError("limit must be ≥ 0")
    return min(limit, MAX_LIMIT)


class Reader(StoreReads):
    """The `StoreReads` queries over a read engine.

    `active_window_s`: a run heard from within it is active.
    """

    def __init__(self, engine: Engine, active_window_s: float = 900.0) -> None:
        self._read = engine
        self.active_window_s = active_window_s

    def _run_id(self, conn: Any, run: str) -> int | None:
        rid = conn.execute(select(m.runs.c.id).where(m.runs.c.name == run)).scalar()
        return int(rid) if rid is not None else None

    def _run_row(self, r: Any, now: float) -> RunRow:
        return RunRow(name=r.name, created_at=r.created_at, last_seen=r.last_seen,
                      last_step=r.last_step, world_size=r.world_size, meta=loads(r.meta),
                      active=r.last_seen >= now - self.active_window_s)

    def list_runs(self) -> list[RunRow]:
        """All runs, most recently seen first."""
        now = time.time()
        with self._read.connect() as conn:
            rows = conn.execute(select(m.runs).order_by(m.runs.c.last_seen.desc())).all()
        return [self._run_row(r, now) for r in rows]

    def get_run(self, name: str) -> RunRow | None:
        """One run by name, or None."""
        with self._read.connect() as conn:
            r = conn.execute(select(m.runs).where(m.runs.c.name == name)).first()
        return self._run_row(r, time.time()) if r is not None else None

    def metrics(self, run: str) -> list[str]:
        """Names of every metric stored for a run (scalars, per-layer values, histograms)."""
        with self._read.connect() as conn:
            rid = self._run_id(conn, run)
            if rid is None:
                return []
            q = union(*(select(t.c.metric).where(t.c.run_id == rid).distinct()
                        for t in (m.scalars, m.layer_values, m.histograms)))
            return sorted(conn.execute(q).scalars())

    def series(self, run: str, metric: str, *, layer: str | None = None, rank: int | None = None,
               step_min: int | None = None, step_max: int | None = None,
               limit: int = 10000) -> list[Point]:
        """Points of one series in step order (the first `limit` from `step_min`).

        Without `layer`: the global scalar (rank 0's value or the value combined from all ranks'
        partial sums) unless `rank` picks one rank (-1 = combined). With `layer`: that layer's
        values, of every rank unless `rank` is given.
        """
        with self._read.connect() as conn:
            rid = self._run_id(conn, run)
            if rid is None:
                return []
            t = m.scalars if layer is None else m.layer_values
            conds = [t.c.run_id == rid, t.c.metric == metric,
                     *_steps(t.c.step, step_min, step_max)]
            if layer is not None:
                conds.append(m.layer_values.c.layer == layer)
            if rank is not None:
                conds.append(t.c.rank == rank)
            elif layer is None:
                conds.append(t.c.rank.in_((GLOBAL_RANK, 0)))
            q: Select[Any] = (select(t.c.step, t.c.time, t.c.value, t.c.value_nf)
                              .where(and_(*conds)).order_by(t.c.step, t.c.id).limit(_limit(limit)))
            return [Point(r.step, r.time, dec(r.value, r.value_nf)) for r in conn.execute(q)]

    def histograms(self, run: str, metric: str, *, layer: str | None = None,
                   step_min: int | None = None, step_max: int | None = None,
                   limit: int = 1000) -> list[HistRow]:
        """Histograms of a metric in step order (all layers unless `layer` is given)."""
        t = m.histograms
        with self._read.connect() as conn:
            rid = self._run_id(conn, run)
            if rid is None:
                return []
            conds = [t.c.run_id == rid, t.c.metric == metric,
                     *_steps(t.c.step, step_min, step_max)]
            if layer is not None:
                conds.append(t.c.layer == layer)
            q = select(t).where(and_(*conds)).order_by(t.c.step, t.c.id).limit(_limit(limit))
            return [HistRow(r.step, r.time, r.layer, r.lo, r.hi, list(loads(r.counts)),
                            r.nonfinite) for r in conn.execute(q)]

    def events(self, run: str, *, type: str | None = None, step_min: int | None = None,
               step_max: int | None = None, limit: int = 1000) -> list[EventRow]:
        """Events of a run in step order, optionally of one type."""
        t = m.events
        with self._read.connect() as conn:
            rid = self._run_id(conn, run)
            if rid is None:
                return []
            conds = [t.c.run_id == rid, *_steps(t.c.step, step_min, step_max)]
            if type is not None:
                conds.append(t.c.type == type)
            q = select(t).where(and_(*conds)).order_by(t.c.step, t.c.id).limit(_limit(limit))
            return [EventRow(r.step, r.time, r.type, loads(r.data), r.rank)
                    for r in conn.execute(q)]

    def alerts(self, run: str | None = None, *, state: str | None = None) -> list[AlertRow]:
        """Alert episodes in the order they started, optionally of one run and/or state."""
        a = m.alerts
        conds: list[ColumnElement[bool]] = []
        if run is not None:
            conds.append(m.runs.c.name == run)
        if state is not None:
            conds.append(a.c.state == state)
        q = (select(a, m.runs.c.name.label("run_name")).join(m.runs, m.runs.c.id == a.c.run_id)
             .where(and_(True, *conds)).order_by(a.c.id))
        with self._read.connect() as conn:
            return [AlertRow(run=r.run_name, rule=r.rule, severity=r.severity, state=r.state,
                             first_step=r.first_step, fired_step=r.fired_step,
                             resolved_step=r.resolved_step, value=dec(r.value, r.value_nf),
                             started_at=r.started_at, fired_at=r.fired_at,
                             resolved_at=r.resolved_at, labels=loads(r.labels),
                             annotations=loads(r.annotations)) for r in conn.execute(q)]

    def latest(self, run: str) -> dict[str, float]:
        """The latest global scalar of each metric of a run."""
        t = m.latest
        q = (select(t.c.metric, t.c.value, t.c.value_nf).join(m.runs, m.runs.c.id == t.c.run_id)
             .where(m.runs.c.name == run))
        with self._read.connect() as conn:
            return {r.metric: dec(r.value, r.value_nf) for r in conn.execute(q)}
