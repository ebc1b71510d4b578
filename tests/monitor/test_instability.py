"""The last instability's loss rise, from drained per-step loss and stability ratio."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from spikewatch.monitor.instability import InstabilityTracker


def _feed(tr: InstabilityTracker, rows: Sequence[tuple[float | None, float | None]],
          start: int = 0) -> list[float]:
    return [tr.update(start + i, loss, ratio) for i, (loss, ratio) in enumerate(rows)]


def test_no_crossing_no_instability() -> None:
    tr = InstabilityTracker()
    out = _feed(tr, [(1.0 / (1 + i), 0.9) for i in range(300)])
    assert set(out) == {1.0}


def test_a_running_instability_counts_once_it_has_settled_and_is_final_at_the_horizon() -> None:
    tr = InstabilityTracker(sustain=3, window=50, horizon=100, settle=10)
    rows: list[tuple[float | None, float | None]] = [(1.0, 0.5)] * 60  # flat loss, min 1.0
    rows += [(1.0, 1.01)] * 3  # the third reading ≥ 1 starts the instability at step 62
    rows += [(1.0 + 0.02 * i, 0.95) for i in range(40)]  # the loss climbs to 1.78 ...
    rows += [(1.2, 0.9)] * 80  # ... and settles
    out = _feed(tr, rows)
    assert out[71] == 1.0  # 9 steps old: not settled, the (absent) previous one counts
    assert out[72] == pytest.approx(1.18)  # 10 steps old: its rise so far (peak 1.18 at 72)
    assert out[161] == pytest.approx(1.78)  # still watched, the peak reached
    assert out[162] == pytest.approx(1.78)  # 100 steps after the start: finished
    assert tr.finished_rise == pytest.approx(1.78)
    assert tr.rise == pytest.approx(1.78)


def test_a_new_crossing_ends_the_last_watch_and_a_run_of_readings_counts_once() -> None:
    tr = InstabilityTracker()
    rows: list[tuple[float | None, float | None]] = [(2.0, 0.5)] * 60
    rows += [(2.0, 1.02)] * 20  # one long crossing: one instability (starts at step 62)
    rows += [(2.6, 0.97)] * 10  # the loss rose 1.3×
    rows += [(2.0, 0.97)] * 20
    rows += [(2.0, 1.01)] * 3  # a second instability at step 112, before the horizon
    rows += [(2.0, 0.9)] * 20  # ... which moves the loss by nothing
    out = _feed(tr, rows)
    assert out[79] == 1.0  # the long crossing is one instability, not yet moving the loss
    assert out[80] == pytest.approx(1.3)
    assert out[112] == pytest.approx(1.3)  # the first one finished at the second's start
    assert tr.finished_rise == pytest.approx(1.3)
    assert out[121] == pytest.approx(1.3)  # the second one not yet settled
    assert out[122] == 1.0  # settled: the latest instability moved the loss 1.0×


def test_a_wobble_after_a_spike_closes_the_gate_before_its_horizon() -> None:
    """A spike (2×), then, within the watch of the next instability, a crossing: the latest
    instability's small rise counts, not the older spike's."""
    tr = InstabilityTracker()
    rows: list[tuple[float | None, float | None]] = [(1.0, 0.5)] * 60
    rows += [(1.0, 1.01)] * 3 + [(2.5, 0.9)] * 5 + [(1.0, 0.9)] * 100  # a 2.5× spike at 63
    rows += [(1.0, 1.01)] * 3 + [(1.1, 0.9)] * 40  # a 1.1× wobble, starting at 170
    out = _feed(tr, rows)
    assert out[169] == pytest.approx(2.5)
    assert out[179] == pytest.approx(2.5)  # the wobble is 9 steps old
    assert out[180] == pytest.approx(1.1)  # 10: the latest instability counts


def test_recovery_reads_the_loss_against_where_the_reported_instability_rose_from() -> None:
    """Before any instability there is none; then the latest loss over the floor the instability
    `rise` reports rose from: back on the plateau 1.0, below it once the run descends past it. A
    crossing still in progress is judged by the instability before it, as the rise is."""
    tr = InstabilityTracker()
    _feed(tr, [(1.0, 0.5)] * 60)
    assert math.isnan(tr.recovery)
    spike = [(1.0, 1.01)] * 3 + [(2.5, 0.9)] * 5 + [(1.0, 0.9)] * 100  # a 2.5× spike at 62
    out = _feed(tr, spike, start=60)
    assert out[-1] == pytest.approx(2.5)
    assert tr.recovery == pytest.approx(1.0)  # back on its plateau, not past it
    _feed(tr, [(1.0 - 0.002 * i, 0.9) for i in range(100)], start=168)  # descends to 0.8
    assert tr.recovery == pytest.approx(0.802)
    _feed(tr, [(0.8, 1.01)] * 3 + [(0.8, 0.9)] * 9, start=268)  # a new crossing, 9 steps old
    assert tr.rise == pytest.approx(2.5)
    assert tr.recovery == pytest.approx(0.8)  # still against the spike's floor
    _feed(tr, [(0.88, 0.9)], start=280)  # 10 steps old: the new one counts, from its own floor
    assert tr.rise == pytest.approx(1.1)
    assert tr.recovery == pytest.approx(1.1)


def test_missing_and_nonfinite_values_are_skipped() -> None:
    tr = InstabilityTracker()
    rows: list[tuple[float | None, float | None]] = [(1.0, None)] * 55 + [(None, 1.2)] * 3
    rows += [(math.nan, math.nan), (math.inf, 0.9)] + [(1.5, 0.9)] * 110
    out = _feed(tr, rows)
    assert out[-1] == pytest.approx(1.5)  # the non-finite loss is not the peak


@pytest.mark.parametrize("bad", [{"sustain": 0}, {"window": 0}, {"horizon": 0}, {"settle": -1}])
def test_bad_configuration(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        InstabilityTracker(**bad)
