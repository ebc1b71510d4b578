"""The ingest transaction: messages in, rows out, deduplicated per (session, seq).

One `Txn` runs inside one database transaction and buffers rows for bulk inserts. It tracks each
agent session's highest contiguous sequence number plus the set of seen numbers above it, so a
resent message is recognised and written once. Partial sums are kept per (run, metric, step) until
all `world_size` ranks reported, then combined into the global series (rank -1).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from math import isfinite
from typing import Any

from sqlalchemy import and_, case, delete, insert, select, update
from sqlalchemy.engine import Connection

from spikewatch.protocol import wire
from spikewatch.protocol.names import Combine
from spikewatch.server.store import _models as m
from spikewatch.server.store._codec import dec, dumps, enc, loads
from spikewatch.server.store._combine import combine
from spikewatch.server.store.rows import GLOBAL_RANK, WriteResult
from spikewatch.server.types import Observation


def dialect_insert(conn: Connection, table: Any) -> Any:
    """INSERT with ON CONFLICT support for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


MAX_SEEN = 1024
"""Most sequence numbers tracked above a session's highest contiguous one."""

COLUMNS: dict[str, tuple[str, ...]] = {
    "scalars": ("run_id", "metric", "rank", "step", "time", "value", "value_nf"),
    "layer_values": ("run_id", "metric", "layer", "rank", "step", "time", "value", "value_nf"),
    "histograms": ("run_id", "metric", "layer", "rank", "step", "time", "lo", "hi", "counts",
                   "nonfinite"),
    "events": ("run_id", "rank", "step", "time", "type", "data"),
}
"""Column order of the row tuples buffered per table."""


def bulk_insert(conn: Connection, table: str, columns: tuple[str, ...],
                rows: list[tuple[Any, ...]]) -> None:
    """Insert many rows fast: COPY on PostgreSQL (psycopg), executemany elsewhere.

    Bypasses SQLAlchemy's per-row parameter processing, which costs more than the database.
    """
    cols = ", ".join(f'"{c}"' for c in columns)
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        raw: Any = conn.connection.driver_connection
        with raw.cursor() as cur, cur.copy(f'COPY "{table}" ({cols}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join(["?" if conn.dialect.paramstyle == "qmark" else "%s"] * len(columns))
    conn.exec_driver_sql(f'INSERT INTO "{table}" ({cols}) VALUES ({marks})', rows)


@dataclass(slots=True)
class _Session:
    run_id: int
    high: int
    seen: set[int]
    meta: str | None = None  # new hello meta to store
    dirty: bool = False


@dataclass(slots=True)
class _ObsAcc:
    time: float
    values: dict[str, float] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)


class Txn:
    """Buffers one transaction's writes; call `message` per message, then `finish`."""

    def __init__(self, conn: Connection, run_ids: dict[str, int]) -> None:
        self.conn = conn
        self.now = time.time()
        self._run_ids = run_ids  # committed cache (read-only here)
        self.new_run_ids: dict[str, int] = {}
        self._sessions: dict[str, _Session] = {}
        self._rows: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self._run_steps: dict[int, int | None] = {}
        self._latest: dict[tuple[int, str], tuple[int, float, float]] = {}
        self._for_update = conn.dialect.name == "postgresql"

    # --- runs and sessions ---------------------------------------------------------------------

    def run_id(self, name: str, world_size: int = 1) -> int:
        """Id of a run, created on first sight."""
        rid = self.new_run_ids.get(name) or self._run_ids.get(name)
        if rid is not None:
            return rid
        found = self.conn.execute(select(m.runs.c.id).where(m.runs.c.name == name)).scalar()
        if found is None:
            pk = self.conn.execute(insert(m.runs).values(
                name=name, created_at=self.now, last_seen=self.now, last_step=None,
                world_size=world_size, meta="{}")).inserted_primary_key
            assert pk is not None
            found = pk[0]
        self.new_run_ids[name] = int(found)
        return int(found)

    def _session(self, h: wire.Header) -> _Session:
        s = self._sessions.get(h.session)
        if s is not None:
            return s
        q = select(m.sessions.c.run_id, m.sessions.c.high_seq, m.sessions.c.seen).where(
            m.sessions.c.session == h.session)
        if self._for_update:
            q = q.with_for_update()
        row = self.conn.execute(q).first()
        if row is None:
            rid = self.run_id(h.run, h.world_size)
            self.conn.execute(insert(m.sessions).values(
                session=h.session, run_id=rid, rank=h.rank, world_size=h.world_size,
                high_seq=0, seen="[]", meta="{}", created_at=self.now, last_seen=self.now))
            s = _Session(rid, 0, set())
        else:
            s = _Session(int(row.run_id), int(row.high_seq), set(loads(row.seen) or []))
        self._sessions[h.session] = s
        return s

    @staticmethod
    def _claim(s: _Session, seq: int) -> bool:
        """Mark `seq` seen; False if it already was (a duplicate).

        Gaps (seqs the agent dropped, or frames that were nacked) never fill; once more than
        `MAX_SEEN` seqs wait above one, the oldest gaps are given up so the set stays bounded.
        """
        if seq <= s.high or seq in s.seen:
            return False
        s.seen.add(seq)
        while len(s.seen) > MAX_SEEN:
            s.high = min(s.seen)
            s.seen.discard(s.high)
        while s.high + 1 in s.seen:
            s.high += 1
            s.seen.discard(s.high)
        s.dirty = True
        return True

    # --- messages ------------------------------------------------------------------------------

    def message(self, msg: wire.Hello | wire.Batch) -> WriteResult:
        """Buffer one message; a duplicate writes nothing."""
        h = msg.header
        s = self._session(h)
        if not self._claim(s, h.seq):
            return WriteResult(duplicate=True, points=0)
        self._run_steps.setdefault(s.run_id, None)
        if isinstance(msg, wire.Hello):
            meta = dumps(dict(msg.meta))
            s.meta = meta
            if h.rank == 0:
                self.conn.execute(update(m.runs).where(m.runs.c.id == s.run_id).values(
                    meta=meta, world_size=h.world_size))
            return WriteResult(duplicate=False, points=0)
        return self._batch(msg, s.run_id)

    def _batch(self, msg: wire.Batch, rid: int) -> WriteResult:
        h = msg.header
        points = 0
        obs: dict[int, _ObsAcc] = {}
        step_events: dict[int, list[wire.Event]] = defaultdict(list)
        rows = self._rows
        scal, lay = rows["scalars"], rows["layer_values"]
        top: int | None = None
        for r in msg.records:
            top = r.step if top is None else max(top, r.step)
            combined: dict[str, float] = {}
            if r.partials:
                points += len(r.partials)
                combined = self._partials(rid, h, r)
            # A step whose partial sums are still incomplete is observed once they complete,
            # with rank 0's scalars and every rank's events: rules see each step once, in order.
            publish = len(combined) == len(r.partials)
            acc: _ObsAcc | None = None
            if publish and ((h.rank == 0 and r.scalars) or r.events or combined):
                acc = obs.setdefault(r.step, _ObsAcc(r.time))
            for metric, x in r.scalars.items():
                if isfinite(x):
                    scal.append((rid, metric, h.rank, r.step, r.time, x, 0))
                else:
                    scal.append((rid, metric, h.rank, r.step, r.time, *enc(x)))
                if h.rank == 0:
                    self._bump_latest(rid, metric, r.step, r.time, x)
                    if acc is not None:
                        acc.values[metric] = x
            points += len(r.scalars)
            for metric, per in r.layers.items():
                for layer, x in per.items():
                    if isfinite(x):
                        lay.append((rid, metric, layer, h.rank, r.step, r.time, x, 0))
                    else:
                        lay.append((rid, metric, layer, h.rank, r.step, r.time, *enc(x)))
                points += len(per)
            for metric, hs in r.hists.items():
                for layer, hist in hs.items():
                    rows["histograms"].append((
                        rid, metric, layer, h.rank, r.step, r.time, hist.lo, hist.hi,
                        dumps(list(hist.counts)), hist.nonfinite))
                points += len(hs)
            for ev in r.events:
                rows["events"].append((rid, h.rank, r.step, r.time, ev.type,
                                       dumps(dict(ev.data))))
                if acc is not None:
                    acc.events.append(ev.type)
                    step_events[r.step].append(ev)
            points += len(r.events)
            if acc is not None and combined:
                acc.values.update(combined)
                if h.world_size > 1:
                    self._merge_deferred(rid, h.rank, r.step, acc, step_events[r.step])
        if top is not None:
            prev = self._run_steps.get(rid)
            self._run_steps[rid] = top if prev is None else max(prev, top)
        observations = [Observation(run=h.run, step=step, time=a.time, values=a.values,
                                    events=tuple(dict.fromkeys(a.events)))
                        for step, a in sorted(obs.items())]
        return WriteResult(duplicate=False, points=points, observations=observations,
                           step_events={k: tuple(v) for k, v in step_events.items() if v})

    def _bump_latest(self, rid: int, metric: str, step: int, t: float, x: float) -> None:
        cur = self._latest.get((rid, metric))
        if cur is None or step >= cur[0]:
            self._latest[(rid, metric)] = (step, t, x)

    def _partials(self, rid: int, h: wire.Header, r: wire.Record) -> dict[str, float]:
        """Store this rank's partial sums; the global values of the metrics now complete."""
        rows = []
        for metric, p in r.partials.items():
            num, num_nf = enc(p.num)
            den, den_nf = enc(p.den)
            rows.append({"run_id": rid, "metric": metric, "step": r.step, "rank": h.rank,
                         "op": p.op.value, "num": num, "num_nf": num_nf, "den": den,
                         "den_nf": den_nf, "world_size": h.world_size, "time": r.time})
        self.conn.execute(dialect_insert(self.conn, m.partials).on_conflict_do_nothing(), rows)
        t = m.partials
        got = self.conn.execute(select(t).where(and_(
            t.c.run_id == rid, t.c.step == r.step, t.c.metric.in_(list(r.partials))))).all()
        by_metric: dict[str, list[Any]] = defaultdict(list)
        for row in got:
            by_metric[row.metric].append(row)
        out: dict[str, float] = {}
        for metric, prs in by_metric.items():
            world = max(p.world_size for p in prs)
            if len(prs) < world:
                continue
            op = Combine(prs[0].op)
            x = combine(op, [dec(p.num, p.num_nf) for p in prs],
                        [dec(p.den, p.den_nf) for p in prs])
            when = max(p.time for p in prs)
            self._rows["scalars"].append((rid, metric, GLOBAL_RANK, r.step, when, *enc(x)))
            self.conn.execute(delete(t).where(and_(t.c.run_id == rid, t.c.metric == metric,
                                                   t.c.step == r.step)))
            self._bump_latest(rid, metric, r.step, when, x)
            out[metric] = x
        return out

    def _merge_deferred(self, rid: int, rank: int, step: int, acc: _ObsAcc,
                        events: list[wire.Event]) -> None:
        """Add what other ranks sent for `step` before it completed: rank 0's scalars and
        every other rank's events."""
        self.flush_rows()
        if rank != 0:
            s = m.scalars
            for row in self.conn.execute(select(s.c.metric, s.c.value, s.c.value_nf).where(
                    and_(s.c.run_id == rid, s.c.step == step, s.c.rank == 0))):
                acc.values.setdefault(row.metric, dec(row.value, row.value_nf))
        e = m.events
        for ev in self.conn.execute(select(e.c.type, e.c.data).where(
                and_(e.c.run_id == rid, e.c.step == step, e.c.rank != rank)).order_by(e.c.id)):
            acc.events.append(ev.type)
            events.append(wire.Event(ev.type, loads(ev.data)))

    # --- end of transaction --------------------------------------------------------------------

    def flush_rows(self) -> None:
        """Insert the buffered series, histogram and event rows (still inside the transaction)."""
        for name, columns in COLUMNS.items():
            batch = self._rows.get(name)
            if batch:
                bulk_insert(self.conn, name, columns, batch)
                batch.clear()

    def finish(self) -> None:
        """Write every buffered row and the session/run/latest bookkeeping."""
        conn = self.conn
        self.flush_rows()
        for sid, s in self._sessions.items():
            if s.dirty or s.meta is not None:
                values: dict[str, Any] = {"high_seq": s.high, "seen": dumps(sorted(s.seen)),
                                          "last_seen": self.now}
                if s.meta is not None:
                    values["meta"] = s.meta
                conn.execute(update(m.sessions).where(m.sessions.c.session == sid).values(values))
        for rid, step in self._run_steps.items():
            values = {"last_seen": self.now}
            if step is not None:
                values["last_step"] = case(
                    (m.runs.c.last_step.is_(None), step),
                    (m.runs.c.last_step < step, step), else_=m.runs.c.last_step)
            conn.execute(update(m.runs).where(m.runs.c.id == rid).values(values))
        if self._latest:
            self._upsert_latest()

    def _upsert_latest(self) -> None:
        rows = []
        for (rid, metric), (step, t, x) in self._latest.items():
            v, nf = enc(x)
            rows.append({"run_id": rid, "metric": metric, "step": step, "time": t, "value": v,
                         "value_nf": nf})
        stmt = dialect_insert(self.conn, m.latest)
        ex = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=[m.latest.c.run_id, m.latest.c.metric],
            set_={"step": ex.step, "time": ex.time, "value": ex.value, "value_nf": ex.value_nf},
            where=m.latest.c.step <= ex.step)
        self.conn.execute(stmt, rows)

