"""Server restarts around close(): the last step is delivered, or spooled, said so and replayed.

An attached training run streams to ``spikewatch serve`` while the daemon is SIGKILLed
and restarted several times, the last time after the last step: `close()` finds the server away
(restarting) with the final batch, the last step's record, in hand. It must keep delivering within
its timeout, so every step, the last one included, is stored exactly once.
If the server stays away for the whole timeout, what close() holds is spooled on disk, the agent
logs it, and the next session on the same spool directory delivers it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, text
from torch import nn

import spikewatch
from spikewatch.agent._monitor import Monitor
from spikewatch.agent._transport import Transport
from spikewatch.server.collector import wait_until
from tests.reliability._daemon import Daemon

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

STEPS = 2400
KILLS = 6  # one after every STEPS // KILLS steps, the last one after the last step


def _loss_steps(url: str, run: str) -> list[int]:
    """Steps of a run's rank-0 loss rows, in step order (a duplicate would appear twice)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT s.step FROM scalars s JOIN runs r ON r.id = s.run_id "
                "WHERE r.name = :run AND s.metric = 'loss' AND s.rank = 0 ORDER BY s.step"),
                {"run": run}).all()
    finally:
        engine.dispose()
    return [int(r.step) for r in rows]


def _attach(daemon: Daemon, run: str, spool: Path) -> tuple[Monitor, Callable[[], None]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    mon = spikewatch.attach(model, opt, run=run, endpoint=daemon.zmq, spool_dir=spool)

    def step() -> None:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        torch.autograd.backward(loss)
        opt.step()
        mon.log(loss)
    return mon, step


def test_sigkill_restarts_lose_not_even_the_last_step(sqlite_url: str, tmp_path: Path) -> None:
    daemon = Daemon(sqlite_url, tmp_path)
    daemon.start()
    daemon.wait_ready()
    mon, train_step = _attach(daemon, "restarts", tmp_path / "spool")
    try:
        for k in range(KILLS):
            for _ in range(STEPS // KILLS):
                train_step()
            if k < KILLS - 1:
                daemon.kill()  # SIGKILL: what was not acknowledged yet dies with it
                daemon.start()
                daemon.wait_ready()
        # All but the last step's record (close() drains it) is delivered by now, so a loss can
        # only be that record: the "every step but the last one".
        assert wait_until(lambda: mon.counters().acked == mon.counters().submitted
                     and mon.counters().spool_pending == 0, 30), mon.counters()
        daemon.kill()
        daemon.start()  # boots while close() runs: close() finds the server away
        t0 = time.monotonic()
        mon.close(timeout=15)
        closed_in = time.monotonic() - t0
        daemon.wait_ready()
    finally:
        mon.close(timeout=2)
        daemon.stop()
    c = mon.counters()
    steps = _loss_steps(sqlite_url, "restarts")
    missing = sorted(set(range(STEPS)) - set(steps))
    assert not missing, f"lost steps {missing[:20]} (the last step is {STEPS - 1}); {c}"
    assert steps == list(range(STEPS)), "a step stored twice"
    assert c.acked == c.submitted, c
    assert (c.dropped, c.rejected, c.spool_pending, c.in_flight) == (0, 0, 0, 0), c
    assert c.spooled > 0  # the outages were real
    assert daemon.starts == KILLS + 1
    assert closed_in < 14, "close() waited for its timeout although all was delivered"
    assert not list((tmp_path / "spool").rglob("*.seg")), "the spool kept acknowledged data"


def test_close_without_server_spools_says_so_and_next_session_delivers(
        sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="spikewatch.agent.transport")
    daemon = Daemon(sqlite_url, tmp_path)
    spool = tmp_path / "spool"
    daemon.start()
    daemon.wait_ready()
    steps = 60
    mon, train_step = _attach(daemon, "closed-offline", spool)
    try:
        for step in range(steps):
            if step == steps - 10:
                daemon.kill()  # down for good: close() cannot deliver the last batches
            train_step()
        t0 = time.monotonic()
        mon.close(timeout=1.0)
        assert time.monotonic() - t0 < 5
        c = mon.counters()
        assert c.spool_pending >= 1, c  # what close() held is on disk ...
        assert c.dropped == 0, c
        assert list(spool.rglob("*.seg"))
        assert "kept in the spool" in caplog.text  # ... and the agent says so
        assert len(_loss_steps(sqlite_url, "closed-offline")) < steps

        daemon.start()
        daemon.wait_ready()
        later = Transport(daemon.zmq, run="closed-offline", spool_dir=spool, resend_after=0.5)
        try:  # the next session on the same spool directory replays what close() spooled
            def replayed() -> bool:
                lc = later.counters()
                return lc.acked > 0 and lc.spool_pending == 0 and lc.in_flight == 0

            assert wait_until(replayed, 30), later.counters()
            assert later.counters().replayed >= c.spool_pending
        finally:
            later.close(timeout=5)
    finally:
        mon.close(timeout=1)
        daemon.stop()
    assert _loss_steps(sqlite_url, "closed-offline") == list(range(steps))
    assert not list(spool.rglob("*.seg")), "the spool kept acknowledged data"
