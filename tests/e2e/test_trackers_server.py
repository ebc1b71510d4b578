"""A run attached with a TensorBoard tracker to a real server (the daemon as a subprocess, SQLite
store): the signals the server stored (GET /api/v1/runs/{run}/series) and the ones TensorBoard's
event file holds are the same values at the same steps."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest
import torch
from torch import nn

import spikewatch
from spikewatch.protocol import names as nm
from tests.agent._loop import train_on
from tests.e2e._procs import Procs, start_daemon
from tests.e2e._train import wait_stored

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STEPS = 60


def test_server_and_tensorboard_hold_the_same_signals(procs: Procs, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    daemon = start_daemon(procs, tmp_path / "daemon", f"sqlite:///{tmp_path / 'sw.db'}")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    x, y = torch.randn(48, 6), torch.randint(0, 3, (48,))
    monitor = spikewatch.attach(model, opt, run="trackers-e2e", endpoint=daemon.zmq,
                                overhead_budget=math.inf,  # the predictor every step, even here
                                trackers=[spikewatch.trackers.TensorBoard(tmp_path / "tb")])
    train_on(monitor, opt, lambda: nn.functional.cross_entropy(model(x), y), STEPS)
    monitor.close(timeout=10.0)
    wait_stored(daemon.http, "trackers-e2e", STEPS - 1)

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    for metric in (nm.LOSS, nm.STABILITY_RATIO_TWO_SECANT, nm.RHO_SAMPLED):
        r = httpx.get(f"{daemon.http}/api/v1/runs/trackers-e2e/series",
                      params={"metric": metric}, timeout=10.0)
        r.raise_for_status()
        stored = {p["step"]: p["value"] for p in r.json()["points"]
                  if isinstance(p["value"], float) and math.isfinite(p["value"])}
        assert len(stored) >= STEPS - 4, metric  # the secant needs two steps first
        board = {e.step: e.value for e in acc.Scalars(f"spikewatch/{metric}")}
        assert set(board) >= set(stored), metric
        for step, value in stored.items():
            assert board[step] == pytest.approx(value, rel=1e-6), (metric, step)
