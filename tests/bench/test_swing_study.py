"""The clean-loss swing counter on real minibatch runs (benchmarks.early_warning.swing_study):
past the edge its swings come before onsets of the full-data loss, and the page on a swing after
a spike leads the onsets after the first; at half the edge the loss never swings. Onsets and
leads are derived from the trajectory obtained (chaotic: they differ between CPUs)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from benchmarks.early_warning.swing_study import _train, score_run, summary


def test_swings_lead_onsets_past_the_edge_and_never_show_far_below_it() -> None:
    name, group, xs = _train(("mb-mlp", 0.002, 0))  # 3.3× the edge: spikes repeatedly
    warning, page = score_run(name, group, xs)
    assert (warning.rule, page.rule) == ("clean_loss_swings", "clean_loss_swings_after_spike")
    onsets = warning.onsets
    assert len(onsets) >= 3
    assert len(warning.leads) >= len(onsets) // 2  # most onsets follow a swing
    assert len(page.leads) >= (len(onsets) - 1) // 2  # most after the first follow one too
    assert len(page.leads) <= len(onsets) - 1  # not the first: no spike before it
    assert all(lead >= 1 for lead in warning.leads + page.leads)
    assert page.grades.count("true") > page.grades.count("false")
    far = score_run(*_train(("mb-mlp", 0.0003, 1)))  # half the edge
    assert all(r.onsets == [] and r.grades == [] for r in far)
    table = summary([warning, page, *far])
    assert "mb-mlp lr 0.002" in table
    assert "mb-mlp lr 0.0003" in table
    assert "clean_loss_swings_after_spike" in table
