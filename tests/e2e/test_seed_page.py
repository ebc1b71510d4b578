"""The seed's spiking FNN, trained with the agent attached as a user attaches it (defaults, no
closure) to a real server (the daemon as a subprocess, SQLite store), produces a page before its
first loss spike onset; a stable control run (lr 0.001, as many steps) produces none. Alerts are
read through the HTTP API (GET /api/v1/runs/{run}/alerts). The trajectory is chaotic (its onsets
differ between CPUs): the spiking run trains until just after its first onset, whatever the step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spikewatch.protocol import names as nm
from tests.e2e._procs import Daemon, Procs, start_daemon
from tests.e2e._train import Trained, alerts, series, train_seed, wait_alerts, wait_stored

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_STEPS = 1500  # the first onset comes at 732 on one CPU, 808 on another
LEAD_WINDOW = 100  # the page must come at most this many steps before the onset


@pytest.fixture(scope="module")
def daemon(procs: Procs, tmp_path_factory: pytest.TempPathFactory) -> Daemon:
    work: Path = tmp_path_factory.mktemp("seed-page")
    return start_daemon(procs, work, f"sqlite:///{work / 'spikewatch.db'}")


def _pages(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Page-severity alert episodes that reached firing."""
    return [a for a in rows if a["severity"] == "page" and a["fired_step"] is not None]


@pytest.fixture(scope="module")
def spiking(daemon: Daemon) -> Trained:
    return train_seed(daemon.zmq, "seed-spiking", lr=0.01, steps=MAX_STEPS, stop_after_onset=5)


def test_spiking_run_pages_before_first_onset(daemon: Daemon, spiking: Trained) -> None:
    trained = spiking
    onsets = trained.onsets
    assert onsets, "the seed problem did not spike: nothing to predict"
    wait_stored(daemon.http, trained.run, len(trained.losses) - 2)

    def paged_ahead(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [a for a in _pages(rows) if onsets[0] - LEAD_WINDOW <= a["fired_step"] < onsets[0]]

    pages = _pages(wait_alerts(daemon.http, trained.run, lambda rows: bool(paged_ahead(rows))))
    before = paged_ahead(pages)
    assert before, (f"no page fired in the {LEAD_WINDOW} steps before the onset at step "
                    f"{onsets[0]}; pages: {[(a['rule'], a['fired_step']) for a in pages]}; "
                    f"{_why_not(daemon, trained.run, onsets[0])}")
    assert any(a["rule"] == "predicted_loss_spike" for a in before), before
    for a in before:
        assert a["first_step"] <= a["fired_step"] < onsets[0]


def _why_not(daemon: Daemon, run: str, onset: int) -> str:
    """What the page reads, for a failure's message: the largest instability rise before the
    onset (the gate: >= 1.5), the predictor's cadences and how many readings it made."""
    def before(metric: str) -> dict[int, float]:
        return {k: v for k, v in series(daemon.http, run, metric).items() if k < onset}
    rise = before(nm.INSTABILITY_RISE)
    cadence = before(nm.AGENT_PREDICTION_CADENCE)
    ratios = before(nm.STABILITY_RATIO_TWO_SECANT)
    return (f"instability_rise max {max(rise.values(), default=None)} at "
            f"{max(rise, key=lambda k: rise[k], default=None)}, prediction cadences "
            f"{sorted(set(cadence.values()))}, {len(ratios)} two-secant readings")


def test_stable_control_run_has_no_page(daemon: Daemon, spiking: Trained) -> None:
    steps = len(spiking.losses)
    trained = train_seed(daemon.zmq, "seed-control", lr=0.001, steps=steps)
    assert trained.onsets == [], "the control run spiked: it is no control"
    wait_stored(daemon.http, trained.run, steps - 2)

    rows = alerts(daemon.http, trained.run)
    assert rows, "no alert episode at all: the rules did not see the control run"
    assert _pages(rows) == [], [(a["rule"], a["fired_step"]) for a in _pages(rows)]
