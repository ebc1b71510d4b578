"""Smoke test of the early-warning runner: one tiny scenario, a real server, alerts via the API."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from benchmarks.early_warning import runner
from benchmarks.early_warning.scenarios import QUICK, by_name
from server.rules import load_rules


@pytest.mark.slow
def test_runner_scores_a_spiking_quadratic_through_a_real_server(tmp_path: Path) -> None:
    (sc,) = by_name([QUICK[0]])
    rows = runner.run_suite([sc], ["exact"], workdir=tmp_path, echo=False)
    (row,) = rows
    assert row.scenario == sc.name
    assert row.estimator == "exact"
    assert row.onsets  # the scenario spikes (ground truth from the loss the server stored)
    assert row.page_leads
    assert min(row.page_leads) >= 1
    assert len(row.page_leads) <= len(row.onsets)
    assert all(rule in {r.name for r in load_rules()} for rule, _ in row.pages)
    text = runner.table(rows)
    assert sc.name in text
    assert "[exact] ALL" in text
    assert (tmp_path / "bench.db").exists()
