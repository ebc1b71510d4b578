"""Persisting alert transitions: one row per alert episode of (run, rule, labels)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, insert, select, update

from spikewatch.server.store import _models as m
from spikewatch.server.store._codec import dumps, enc
from spikewatch.server.store._writer import Txn
from spikewatch.server.store.rows import labels_key
from spikewatch.server.types import AlertState, Transition

_OPEN = (AlertState.PENDING.value, AlertState.FIRING.value)


def save_transitions(txn: Txn, transitions: Sequence[Transition]) -> None:
    """Apply transitions in order: pending opens an episode, firing/resolved/inactive update the
    open one (firing without a pending opens it at the firing step); resolving keeps the episode's
    value and annotations from when it fired. A repeated pending or firing
    (a rule engine that restarted) refreshes the value and never moves an episode backwards."""
    a = m.alerts
    conn = txn.conn
    for t in transitions:
        rid = txn.run_id(t.run)
        key = labels_key(t.labels)
        found = conn.execute(
            select(a.c.id, a.c.state).where(and_(a.c.run_id == rid, a.c.rule == t.rule,
                                                 a.c.labels_key == key, a.c.state.in_(_OPEN)))
            .order_by(a.c.id.desc()).limit(1)).first()
        open_id, open_state = (found.id, found.state) if found is not None else (None, None)
        v, nf = enc(t.value)
        common: dict[str, Any] = {"state": t.state.value, "severity": t.severity.value,
                                  "value": v, "value_nf": nf, "updated_at": txn.now,
                                  "annotations": dumps(dict(t.annotations))}
        if t.state is AlertState.FIRING:
            common.update(fired_step=t.step, fired_at=t.time)
        elif t.state in (AlertState.RESOLVED, AlertState.INACTIVE):
            # an episode keeps the value and text it went pending/fired with: that is what paged
            common = {"state": t.state.value, "updated_at": txn.now,
                      "resolved_step": t.step, "resolved_at": t.time}
        if open_id is not None and (t.state.value == open_state or (
                t.state is AlertState.PENDING and open_state == AlertState.FIRING.value)):
            # the same state again (e.g. an engine restarted): refresh, keep the first times
            conn.execute(update(a).where(a.c.id == open_id).values(
                value=v, value_nf=nf, updated_at=txn.now))
        elif open_id is not None:
            conn.execute(update(a).where(a.c.id == open_id).values(common))
        elif t.state in (AlertState.PENDING, AlertState.FIRING):
            conn.execute(insert(a).values(run_id=rid, rule=t.rule, labels_key=key,
                                          first_step=t.step, started_at=t.time,
                                          labels=dumps(dict(t.labels)), **common))
        # a resolve/inactive with no open episode has nothing to close
