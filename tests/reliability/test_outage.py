"""Outage: no server at all while training, then the real daemon appears; and a full spool.

Behaviour only (timings are in benchmarks/outage.py): an attached training run with nobody
listening completes and its batches wait in the on-disk spool; when `spikewatch serve`
starts, the still-open transport replays them and every step is stored in order, exactly once. A
spool too small for what is submitted drops priority-0 data first and counts every loss.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, text
from torch import nn

from spikewatch import agent
from spikewatch.agent._transport import (
    PRIORITY_DIAGNOSTICS,
    PRIORITY_EVENTS,
    PRIORITY_SIGNALS,
    Transport,
)
from spikewatch.protocol import wire
from spikewatch.server.collector import wait_until
from tests.reliability._daemon import Daemon

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

STEPS = 60  # the default profile drains every 25 steps: two batches spooled, one sent live


def _scalars(url: str, run: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) of a run's rank-0 scalar rows in insertion order."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT s.step, s.value FROM scalars s JOIN runs r ON r.id = s.run_id "
                "WHERE r.name = :run AND s.metric = :m AND s.rank = 0 ORDER BY s.id"),
                {"run": run, "m": metric}).all()
    finally:
        engine.dispose()
    return [(int(s), float(v)) for s, v in rows]


def _segments(spool: Path, prio: int | None = None) -> int:
    """Bytes of spool segment files (of one priority lane, or all)."""
    pattern = "*.seg" if prio is None else f"p{prio}-*.seg"
    return sum(p.stat().st_size for p in spool.rglob(pattern))


def test_training_without_server_spools_then_replays_everything_once(
        sqlite_url: str, tmp_path: Path) -> None:
    daemon = Daemon(sqlite_url, tmp_path)  # ports chosen now, nobody listens until start()
    spool = tmp_path / "spool"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    mon = agent.attach(model, opt, run="outage-run", endpoint=daemon.zmq, spool_dir=spool)
    losses: list[float] = []
    try:
        for _ in range(STEPS):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            torch.autograd.backward(loss)
            opt.step()
            mon.log(loss)
            losses.append(loss.item())
        assert mon.transport.flush(10), "submitted batches were neither acked nor spooled"
        c = mon.counters()
        assert not c.online
        assert c.acked == 0
        assert c.spool_pending == c.submitted >= 3  # hello + the batches of two drains
        assert c.dropped == 0
        assert _segments(spool) > 0

        daemon.start()
        daemon.wait_ready()
        assert wait_until(lambda: mon.counters().spool_pending == 0
                     and mon.counters().in_flight == 0, 60), mon.counters()
        assert mon.counters().online
        mon.close(timeout=30)  # the last partial drain interval goes out live
        c = mon.counters()
        assert c.acked == c.submitted, c
        assert c.dropped == 0, c
        assert c.spool_pending == 0, c
    finally:
        mon.close(timeout=5)
        daemon.stop()

    stored = _scalars(sqlite_url, "outage-run", "loss")
    assert [s for s, _ in stored] == list(range(STEPS)), "not every step, in order, once"
    assert [v for _, v in stored] == pytest.approx(losses, rel=1e-6)
    assert _segments(spool) == 0, "the spool was not emptied after the acks"


METRIC = {PRIORITY_DIAGNOSTICS: "agent_queued", PRIORITY_SIGNALS: "loss", PRIORITY_EVENTS: "lr"}
PER_PRIORITY = 40


def _record(k: int, prio: int) -> wire.Record:
    return wire.Record(k, time.time(), {METRIC[prio]: float(k)},
                       {"rho": {f"blocks.{j}.mlp": 0.5 + j for j in range(16)}})


def test_full_spool_drops_priority_zero_first_and_counts_it(sqlite_url: str,
                                                            tmp_path: Path) -> None:
    daemon = Daemon(sqlite_url, tmp_path)
    spool = tmp_path / "spool"
    frame = len(wire.encode(wire.Batch(wire.Header("0" * 32, 1, "outage-full"),
                                       (_record(10_000, 1),))))
    # room for all of priorities 1 and 2 plus a few segments of slack, not for priority 0 too
    room = 2 * PER_PRIORITY * (frame + 64) + 3 * 4096
    assert room < 3 * PER_PRIORITY * frame
    t = Transport(daemon.zmq, run="outage-full", spool_dir=spool, max_spool_bytes=room)
    sent = dict.fromkeys(METRIC, 0)
    try:
        assert t.hello({"test": "full-spool"})
        for k in range(3 * PER_PRIORITY):
            prio = k % 3
            # the memory queue takes every batch; the spool behind it is what overflows
            assert t.submit([_record(k, prio)], priority=prio)
            sent[prio] += 1
            assert t.flush(10)
        c = t.counters()
        assert c.dropped > 0
        assert c.acked == 0
        assert c.spool_bytes <= room
        assert _segments(spool, PRIORITY_EVENTS) > 0
        assert _segments(spool, PRIORITY_SIGNALS) > 0

        daemon.start()
        daemon.wait_ready()
        assert wait_until(lambda: t.counters().spool_pending == 0 and t.counters().in_flight == 0,
                     60), t.counters()
        t.close(timeout=10)
    finally:
        t.close(timeout=2)
        daemon.stop()

    stored = {p: _scalars(sqlite_url, "outage-full", m) for p, m in METRIC.items()}
    assert len(stored[PRIORITY_EVENTS]) == sent[PRIORITY_EVENTS]
    assert len(stored[PRIORITY_SIGNALS]) == sent[PRIORITY_SIGNALS]
    assert len(stored[PRIORITY_DIAGNOSTICS]) < sent[PRIORITY_DIAGNOSTICS]
    c = t.counters()
    lost = sum(sent.values()) - sum(len(v) for v in stored.values())
    assert lost > 0
    assert c.dropped == lost, "every lost batch is counted, nothing else"
    assert c.acked == 1 + sum(len(v) for v in stored.values())  # the hello too
    for rows in stored.values():  # what survived is stored once, in submission order
        steps = [s for s, _ in rows]
        assert steps == sorted(set(steps))
