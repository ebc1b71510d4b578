"""The SQL store on SQLite and real PostgreSQL: round-trips, dedup, partials, alerts, retention."""

from __future__ import annotations

import math
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from spikewatch.protocol import wire
from spikewatch.protocol.names import Combine
from spikewatch.server.store import GLOBAL_RANK, KindPolicy, RetentionPolicy, Store, StoreReads
from spikewatch.server.types import AlertState, Severity, Transition


def header(session: str, seq: int, run: str = "r1", rank: int = 0, world: int = 1) -> wire.Header:
    return wire.Header(session, seq, run, rank, world, time.time())


def batch(session: str, seq: int, *records: wire.Record, run: str = "r1", rank: int = 0,
          world: int = 1) -> wire.Batch:
    return wire.Batch(header(session, seq, run, rank, world), tuple(records))


def sid() -> str:
    return uuid.uuid4().hex


def test_nonfinite_values_round_trip(store: Store) -> None:
    s = sid()
    rec = wire.Record(
        7, 100.5, {"loss": math.nan, "rho": math.inf, "lr": -math.inf, "grad_norm": 2.5},
        layers={"rho": {"fc1": math.nan, "fc2": 0.25}},
        hists={"sa_hist": {"fc1": wire.Histogram(-1.0, 1.0, (0, 3, 5, 0), nonfinite=4)}},
        events=(wire.Event("nonfinite", {"what": "loss", "value": math.inf, "n": 3}),))
    res = store.write(batch(s, 1, rec))
    assert not res.duplicate
    assert res.points == 4 + 2 + 1 + 1
    [obs] = res.observations
    assert obs.step == 7
    assert obs.events == ("nonfinite",)
    assert math.isnan(obs.values["loss"])
    assert obs.values["rho"] == math.inf

    [p] = store.series("r1", "loss")
    assert (p.step, p.time) == (7, 100.5)
    assert math.isnan(p.value)
    assert store.series("r1", "rho")[0].value == math.inf
    assert store.series("r1", "lr")[0].value == -math.inf
    assert store.series("r1", "grad_norm")[0].value == 2.5
    assert math.isnan(store.series("r1", "rho", layer="fc1")[0].value)
    assert store.series("r1", "rho", layer="fc2")[0].value == 0.25
    [h] = store.histograms("r1", "sa_hist")
    assert (h.layer, h.lo, h.hi, h.counts, h.nonfinite) == ("fc1", -1.0, 1.0, [0, 3, 5, 0], 4)
    [e] = store.events("r1")
    assert e.type == "nonfinite"
    assert e.data == {"what": "loss", "value": math.inf, "n": 3}
    latest = store.latest("r1")
    assert math.isnan(latest["loss"])
    assert latest["lr"] == -math.inf
    assert latest["grad_norm"] == 2.5
    assert store.metrics("r1") == ["grad_norm", "loss", "lr", "rho", "sa_hist"]


def test_nonfinite_markers_keep_their_stored_codes(store: Store) -> None:
    """The marker column's codes are the schema's (rows written by older releases read back)."""
    rec = wire.Record(1, 1.0, {"a": 0.5, "b": math.nan, "c": math.inf, "d": -math.inf})
    store.write(batch(sid(), 1, rec))
    with store.connection() as conn:
        rows = conn.execute(text("SELECT metric, value_nf FROM scalars"))
        codes = {r.metric: r.value_nf for r in rows}
    assert codes == {"a": 0, "b": 1, "c": 2, "d": 3}


def test_store_is_the_one_read_interface(store: Store) -> None:
    reads: StoreReads = store  # what the API, exporter, report and backtest are given
    assert isinstance(reads, StoreReads)


def test_hello_creates_run_with_meta(store: Store) -> None:
    s = sid()
    store.write(wire.Hello(header(s, 1, "job-a", 0, 4), {"optimizer": "AdamW", "params": 1234,
                                                         "resumed_at": None, "lr": 0.001}))
    [run] = store.list_runs()
    assert run.name == "job-a"
    assert run.world_size == 4
    assert run.active
    assert run.meta == {"optimizer": "AdamW", "params": 1234, "resumed_at": None, "lr": 0.001}
    assert run.last_step is None
    store.write(batch(s, 2, wire.Record(5, 1.0, {"loss": 1.0}), wire.Record(9, 2.0, {}),
                      run="job-a", world=4))
    got = store.get_run("job-a")
    assert got is not None
    assert got.last_step == 9
    assert got.last_seen >= run.last_seen
    assert store.get_run("nope") is None
    assert store.series("nope", "loss") == []
    assert store.metrics("nope") == []


def test_dedup_per_session_and_seq_out_of_order(store: Store) -> None:
    s = sid()
    msgs = {q: batch(s, q, wire.Record(q, float(q), {"loss": float(q)})) for q in range(1, 6)}
    for q in (3, 1, 5):
        assert not store.write(msgs[q]).duplicate
    for q in (3, 1, 5):
        res = store.write(msgs[q])
        assert res.duplicate
        assert res.points == 0
        assert res.observations == []
    results = store.write_many([msgs[2], msgs[4], msgs[2]])  # a resend inside one transaction
    assert [r.duplicate for r in results] == [False, False, True]
    assert [p.value for p in store.series("r1", "loss")] == [1.0, 2.0, 3.0, 4.0, 5.0]
    # the same seq from another session is a different message
    assert not store.write(batch(sid(), 1, wire.Record(6, 6.0, {"loss": 6.0}))).duplicate
    assert len(store.series("r1", "loss")) == 6


def test_gaps_in_seqs_keep_dedup_state_bounded(sqlite_store: Store) -> None:
    from spikewatch.server.store._writer import MAX_SEEN

    s = sid()
    n = MAX_SEEN + 50  # seq 1 never arrives (e.g. the agent dropped it)
    msgs = [batch(s, q, wire.Record(q, float(q), {"loss": 1.0})) for q in range(2, n + 2)]
    for i in range(0, len(msgs), 256):
        sqlite_store.write_many(msgs[i:i + 256])
    with sqlite_store.connection() as conn:
        high, seen = conn.exec_driver_sql(
            "SELECT high_seq, seen FROM sessions WHERE session = ?", (s,)).one()
    assert high == n + 1
    assert seen == "[]"
    assert sqlite_store.write(msgs[-1]).duplicate
    assert len(sqlite_store.series("r1", "loss", limit=100000)) == n


@pytest.mark.parametrize(
    ("op", "parts", "expected"),
    [
        (Combine.RATIO, [(3.0, 2.0), (5.0, 6.0)], 1.0),
        (Combine.SQRT_RATIO, [(9.0, 0.5), (16.0, 0.5)], 5.0),
        (Combine.SUM, [(0.1, 1.0), (0.2, 1.0)], math.fsum([0.1, 0.2])),
        (Combine.MAX, [(0.3, 1.0), (0.7, 1.0)], 0.7),
        (Combine.MIN, [(0.3, 1.0), (0.7, 1.0)], 0.3),
    ],
)
def test_partials_combined_when_every_rank_reported(
    sqlite_store: Store, op: Combine, parts: list[tuple[float, float]], expected: float
) -> None:
    store = sqlite_store
    s0, s1 = sid(), sid()
    r0 = wire.Record(10, 1.0, {"loss": 2.0}, partials={"m": wire.Partial(op, *parts[0])})
    first = store.write(batch(s0, 1, r0, rank=0, world=2))
    assert first.observations == []  # the step is observed once it is complete
    assert store.series("r1", "m") == []
    assert store.series("r1", "loss")[0].value == 2.0  # but stored at once
    r1 = wire.Record(10, 1.5, partials={"m": wire.Partial(op, *parts[1])})
    second = store.write(batch(s1, 1, r1, rank=1, world=2))
    [obs] = second.observations
    assert obs.step == 10
    assert obs.values == {"loss": 2.0, "m": expected}
    [p] = store.series("r1", "m")
    assert p.value == expected
    assert p.time == 1.5
    assert store.series("r1", "m", rank=GLOBAL_RANK)[0].value == expected
    assert store.latest("r1")["m"] == expected


def test_partials_on_both_databases_with_nonfinite(store: Store) -> None:
    s = [sid() for _ in range(3)]
    for rank in range(3):
        num = math.inf if rank == 1 else 1.0
        res = store.write(batch(s[rank], 1, wire.Record(
            3, 1.0, partials={"grad_norm": wire.Partial(Combine.SQRT_RATIO, num),
                              "sa_sign_diversity": wire.Partial(Combine.MIN, 0.5 + rank)}),
            rank=rank, world=3))
        assert bool(res.observations) == (rank == 2)
    assert store.series("r1", "grad_norm")[0].value == math.inf
    assert store.series("r1", "sa_sign_diversity")[0].value == 0.5


@pytest.mark.parametrize("one_transaction", [False, True])
def test_distributed_steps_observed_once_in_order(store: Store, one_transaction: bool) -> None:
    s0, s1 = sid(), sid()

    def part(x: float) -> dict[str, wire.Partial]:
        return {"grad_norm": wire.Partial(Combine.SQRT_RATIO, x, 0.5)}

    jump = wire.Event("nonfinite", {"what": "grad", "rank": 0})  # deferred with rank 0's step 2
    rank0 = batch(s0, 1, wire.Record(1, 1.0, {"loss": 1.0}, partials=part(2.0)),
                  wire.Record(2, 2.0, {"loss": 2.0}, partials=part(2.0), events=(jump,)),
                  rank=0, world=2)
    rank1 = batch(s1, 1, wire.Record(1, 1.0, partials=part(2.0)),
                  wire.Record(2, 2.0, partials=part(math.inf)), rank=1, world=2)
    if one_transaction:
        results = store.write_many([rank0, rank1])
    else:
        results = [store.write(rank0), store.write(rank1)]
    assert results[0].observations == []
    obs = [o for r in results for o in r.observations]
    assert [o.step for o in obs] == [1, 2]
    assert obs[0].values == {"loss": 1.0, "grad_norm": 2.0}
    assert obs[1].values == {"loss": 2.0, "grad_norm": math.inf}
    assert obs[1].events == ("nonfinite",)
    assert results[1].step_events[2] == (jump,)


def test_rank_scalars_are_not_global(store: Store) -> None:
    res = store.write(batch(sid(), 1, wire.Record(1, 1.0, {"loss": 9.0}), rank=1, world=2))
    assert res.observations == []
    assert res.points == 1
    assert store.series("r1", "loss") == []
    assert store.series("r1", "loss", rank=1)[0].value == 9.0
    assert store.latest("r1") == {}


def test_series_filters_and_limits(store: Store) -> None:
    s = sid()
    recs = [wire.Record(i, float(i), {"loss": i / 10}, layers={"rho": {"a": i, "b": -i}},
                        hists={"sa_hist": {"a": wire.Histogram(-1, 1, (i,))}},
                        events=(wire.Event("phase_change" if i % 2 else "resumed"),))
            for i in range(20)]
    store.write(batch(s, 1, *recs))
    pts = store.series("r1", "loss", step_min=5, step_max=9)
    assert [p.step for p in pts] == [5, 6, 7, 8, 9]
    assert [p.step for p in store.series("r1", "loss", step_min=5, limit=3)] == [5, 6, 7]
    assert [p.value for p in store.series("r1", "rho", layer="b", step_max=2)] == [0, -1, -2]
    assert [h.counts for h in store.histograms("r1", "sa_hist", step_min=18)] == [[18], [19]]
    assert store.histograms("r1", "sa_hist", layer="zz") == []
    ev = store.events("r1", type="resumed", step_max=5)
    assert [e.step for e in ev] == [0, 2, 4]
    assert len(store.events("r1", limit=4)) == 4
    with pytest.raises(ValueError, match="limit"):
        store.series("r1", "loss", limit=-1)


def test_latest_keeps_the_highest_step(store: Store) -> None:
    s = sid()
    store.write(batch(s, 2, wire.Record(50, 5.0, {"loss": 0.5})))
    store.write(batch(s, 1, wire.Record(40, 4.0, {"loss": 0.4, "rho": 0.1})))  # arrives late
    assert store.latest("r1") == {"loss": 0.5, "rho": 0.1}
    assert store.get_run("r1").last_step == 50  # type: ignore[union-attr]


def tr(state: AlertState, step: int, value: float, rule: str = "spike") -> Transition:
    return Transition(rule, "r1", Severity.PAGE, state, step, 1000.0 + step, value,
                      labels={"metric": "stability_ratio"}, annotations={"runbook": "lower lr"})


def test_alert_lifecycle(store: Store) -> None:
    store.write(batch(sid(), 1, wire.Record(1, 1.0, {"loss": 1.0})))
    store.save_transitions([tr(AlertState.PENDING, 10, 1.1)])
    [a] = store.alerts("r1")
    assert (a.state, a.first_step, a.fired_step, a.value) == ("pending", 10, None, 1.1)
    store.save_transitions([tr(AlertState.FIRING, 14, math.nan)])
    store.save_transitions([tr(AlertState.RESOLVED, 30, 0.5)])
    [a] = store.alerts("r1")
    assert (a.state, a.first_step, a.fired_step, a.resolved_step) == ("resolved", 10, 14, 30)
    assert (a.started_at, a.fired_at, a.resolved_at) == (1010.0, 1014.0, 1030.0)
    assert math.isnan(a.value)  # the value it fired with (NaN kept), not the resolving 0.5
    assert a.severity == "page"
    assert a.labels == {"metric": "stability_ratio"}
    assert a.annotations == {"runbook": "lower lr"}
    # a second episode, a pending that cleared, and another rule that fires at once
    store.save_transitions([tr(AlertState.PENDING, 40, 1.2), tr(AlertState.INACTIVE, 42, 0.9),
                            tr(AlertState.FIRING, 50, 3.0, rule="nonfinite")])
    rows = store.alerts("r1")
    assert [(r.rule, r.state, r.first_step) for r in rows] == [
        ("spike", "resolved", 10), ("spike", "inactive", 40), ("nonfinite", "firing", 50)]
    assert [r.rule for r in store.alerts(state="firing")] == ["nonfinite"]
    # a restarted rule engine repeats pending/firing: the episode keeps its first steps
    store.save_transitions([tr(AlertState.PENDING, 60, 4.0, rule="nonfinite"),
                            tr(AlertState.FIRING, 61, 5.0, rule="nonfinite")])
    [again] = store.alerts("r1", state="firing")
    assert (again.first_step, again.fired_step, again.value) == (50, 50, 5.0)
    assert store.alerts("other") == []


def test_retention_thins_old_layers_and_histograms(store: Store) -> None:
    now = time.time()
    old, new = now - 10 * 86400, now - 3600
    s = sid()
    recs = [wire.Record(i, old if i < 100 else new, {"loss": float(i)},
                        layers={"rho": {"a": float(i)}},
                        hists={"sa_hist": {"a": wire.Histogram(-1, 1, (i,))}}) for i in range(120)]
    store.write(batch(s, 1, *recs))
    policy = RetentionPolicy(scalars=KindPolicy(), layers=KindPolicy(10, 7.0),
                             histograms=KindPolicy(25, 7.0), events=KindPolicy(1, None, 5.0))
    deleted = store.apply_retention(policy, now=now)
    assert deleted["scalars"] == 0
    assert deleted["layers"] == 90
    assert deleted["histograms"] == 96
    steps = [p.step for p in store.series("r1", "rho", layer="a", limit=1000)]
    assert steps == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, *range(100, 120)]
    assert [h.step for h in store.histograms("r1", "sa_hist", limit=1000)][:4] == [0, 25, 50, 75]
    assert len(store.series("r1", "loss", limit=1000)) == 120
    assert store.apply_retention(policy, now=now)["layers"] == 0  # idempotent
    drop = RetentionPolicy(scalars=KindPolicy(1, None, 5.0))
    assert store.apply_retention(drop, now=now)["scalars"] == 100


def test_incomplete_partials_expire(sqlite_store: Store) -> None:
    long_ago = time.time() - 3 * 86400
    sqlite_store.write(batch(sid(), 1, wire.Record(
        1, long_ago, partials={"m": wire.Partial(Combine.SUM, 1.0)}), world=2))
    assert sqlite_store.apply_retention(RetentionPolicy())["partials"] == 1


def test_locked_sqlite_is_retried_not_lost(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    store = Store(url, busy_timeout_ms=20, retries=50)
    store.upgrade()
    blocker = sqlite3.connect(tmp_path / "x.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # hold the write lock
    release = threading.Timer(0.5, blocker.execute, args=("COMMIT",))
    release.start()
    t0 = time.monotonic()
    res = store.write(batch(sid(), 1, wire.Record(1, 1.0, {"loss": 1.0})))
    assert time.monotonic() - t0 >= 0.4
    assert not res.duplicate
    assert store.series("r1", "loss")[0].value == 1.0
    release.join()
    blocker.close()
    store.close()


def test_locked_sqlite_without_retries_raises_and_commits_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    store = Store(url, busy_timeout_ms=10, retries=0)
    store.upgrade()
    s = sid()
    msg = batch(s, 1, wire.Record(1, 1.0, {"loss": 1.0}))
    blocker = sqlite3.connect(tmp_path / "x.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(OperationalError, match="locked"):
        store.write(msg)
    blocker.execute("COMMIT")
    blocker.close()
    assert not store.write(msg).duplicate  # the failed attempt left no trace
    assert len(store.series("r1", "loss")) == 1
    store.close()
