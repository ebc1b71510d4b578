"""A minibatch run that logs its clean loss, trained with the agent attached as a user attaches it
(defaults, no closure) to a real server (the daemon as a subprocess, SQLite store): once its clean
loss has spiked, a swing of it pages (`clean_loss_swings_after_spike`) before a later onset, and
never before the first. The benchmark's `mb-mlp-lr0.002-s0` (the seed MLP on batches of 32,
3.3× its edge learning rate), trained until its third onset of the full-data loss, whatever the
steps (chaotic: they differ between CPUs). Alerts are read through the HTTP API."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import torch

import spikewatch
from benchmarks.early_warning._train import Arm
from benchmarks.early_warning.scenarios import by_name
from spikewatch.server.backtest import spike_onsets
from tests.e2e._procs import Daemon, Procs, start_daemon
from tests.e2e._train import wait_alerts, wait_stored

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RUN = "mb-mlp-spiking"
MAX_STEPS = 3000
PAGE = "clean_loss_swings_after_spike"


@pytest.fixture(scope="module")
def daemon(procs: Procs, tmp_path_factory: pytest.TempPathFactory) -> Daemon:
    work: Path = tmp_path_factory.mktemp("minibatch-page")
    return start_daemon(procs, work, f"sqlite:///{work / 'spikewatch.db'}")


def _train(endpoint: str) -> list[float]:
    """The run's full-data loss per step, trained (batch loss logged as `loss`, the clean one
    as `eval_loss`) until 20 steps after its third onset or `MAX_STEPS`."""
    torch.set_num_threads(1)
    (scenario,) = by_name(["mb-mlp-lr0.002-s0"])
    task = scenario.build()
    arm = Arm(task, spikewatch.attach(task.model, task.optimizer, run=RUN, endpoint=endpoint))
    try:
        while arm.step < MAX_STEPS:
            arm.run(arm.step + 50)
            onsets = spike_onsets(list(enumerate(arm.evals)))
            if len(onsets) >= 3 and arm.step > onsets[2] + 20:
                break
    finally:
        assert arm.mon is not None
        arm.mon.close(timeout=10.0)
    return arm.evals


def test_a_swing_after_a_spike_pages_before_the_next_onset(daemon: Daemon) -> None:
    evals = _train(daemon.zmq)
    onsets = spike_onsets(list(enumerate(evals)))
    assert len(onsets) >= 3, f"the run spiked {len(onsets)} times: nothing to page"
    wait_stored(daemon.http, RUN, len(evals) - 2)

    def paged(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [a for a in rows if a["rule"] == PAGE and a["fired_step"] is not None]

    pages = paged(wait_alerts(daemon.http, RUN, lambda rows: bool(paged(rows))))
    fired = [a["fired_step"] for a in pages]
    assert fired, "the minibatch page never fired"
    assert min(fired) > onsets[0], f"paged at {min(fired)}, before any spike ({onsets[0]})"
    led = [o for prev, o in pairwise(onsets)
           if any(prev < s < o for s in fired)]
    assert led, f"no page between onsets {onsets}: pages at {fired}"
