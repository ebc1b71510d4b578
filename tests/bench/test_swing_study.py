"""The clean-loss swing counter on real minibatch runs (benchmarks.early_warning.swing_study):
past the edge its swings come before onsets of the full-data loss; at half the edge the loss
never swings. Onsets and leads are derived from the trajectory obtained (chaotic: they differ
between CPUs)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from benchmarks.early_warning.swing_study import _train, score_run, summary


def test_swings_lead_onsets_past_the_edge_and_never_show_far_below_it() -> None:
    name, group, xs = _train(("mb-mlp", 0.002, 0))  # 3.3× the edge: spikes repeatedly
    past = score_run(name, group, xs)
    assert len(past.onsets) >= 3
    assert len(past.leads) >= len(past.onsets) // 2  # most onsets follow a swing
    assert all(lead >= 1 for lead in past.leads)
    assert past.grades.count("true") >= 1
    far = score_run(*_train(("mb-mlp", 0.0003, 1)))  # half the edge
    assert far.onsets == []
    assert far.grades == []
    table = summary([past, far])
    assert "mb-mlp lr 0.002" in table
    assert "mb-mlp lr 0.0003" in table
