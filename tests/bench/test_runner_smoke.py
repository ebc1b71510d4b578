"""Smoke test of the early-warning runner: quick scenarios, a real server, alerts and the ground
truth read back through the API, both arms (with and without the agent) compared."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("torch")


from benchmarks.early_warning import runner
from benchmarks.early_warning.scenarios import QUICK, SCENARIOS, Scenario, by_name
from spikewatch.server.rules import load_rules


@pytest.mark.slow
def test_runner_scores_a_spiking_quadratic_through_a_real_server(tmp_path: Path) -> None:
    (sc,) = by_name([QUICK[0]])
    rows = runner.run_suite([sc], ["default"], workdir=tmp_path, echo=False)
    (row,) = rows
    assert row.scenario == sc.name
    assert row.config == "default"
    assert row.config_label.startswith("attach defaults, no closure")
    assert row.truth == "loss"
    assert row.identical  # the agent only reads: the same trajectory as without it
    assert row.notes == []  # the onsets in the server's series are the unattached arm's
    assert row.onsets  # the scenario spikes (ground truth from the loss the server stored)
    assert all(lead >= 1 for lead in row.page_leads)
    assert len(row.page_leads) <= len(row.onsets)
    assert all(rule in {r.name for r in load_rules()} for rule, _ in row.pages)
    assert row.attached_s > 0
    assert row.unattached_s > 0
    assert math.isfinite(row.ratio)
    assert row.ratio_q1 <= row.ratio <= row.ratio_q3
    text = runner.table(rows)
    assert sc.name in text
    assert "[default] ALL" in text
    assert "[config: attach defaults, no closure" in text
    assert (tmp_path / "bench.db").exists()


@pytest.mark.slow
def test_runner_scores_a_minibatch_run_on_the_eval_loss_the_server_stored(tmp_path: Path) -> None:
    sc = next(s for s in SCENARIOS if s.minibatch and s.name.startswith("mb-"))
    short = Scenario(sc.name, sc.family, sc.control, 300, sc.build, sc.minibatch)
    (row,) = runner.run_suite([short], ["default"], workdir=tmp_path, echo=False)
    assert row.truth == "eval_loss"
    assert row.identical
    assert row.notes == []
