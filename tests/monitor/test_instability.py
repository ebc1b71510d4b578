"""The last instability's loss rise, from drained per-step loss and stability ratio."""

from __future__ import annotations

import math

import pytest

from spikewatch.monitor.instability import InstabilityTracker


def _feed(tr: InstabilityTracker, rows: list[tuple[float | None, float | None]], start: int = 0
          ) -> list[float]:
    return [tr.update(start + i, loss, ratio) for i, (loss, ratio) in enumerate(rows)]


def test_no_crossing_no_instability() -> None:
    tr = InstabilityTracker()
    out = _feed(tr, [(1.0 / (1 + i), 0.9) for i in range(300)])
    assert set(out) == {1.0}


def test_rise_is_known_once_the_horizon_has_passed() -> None:
    tr = InstabilityTracker(sustain=3, window=50, horizon=100)
    rows: list[tuple[float | None, float | None]] = [(1.0, 0.5)] * 60  # flat loss, min 1.0
    rows += [(1.0, 1.01)] * 3  # the third reading ≥ 1 starts the instability at step 62
    rows += [(1.0 + 0.02 * i, 0.95) for i in range(40)]  # the loss climbs to 1.78 ...
    rows += [(1.2, 0.9)] * 80  # ... and settles
    out = _feed(tr, rows)
    assert out[161] == 1.0  # 99 steps after the start: still watching
    assert out[162] == pytest.approx(1.78)  # 100 steps after: 1.78 / 1.0
    assert tr.rise == pytest.approx(1.78)


def test_a_new_crossing_ends_the_last_watch_and_a_run_of_readings_counts_once() -> None:
    tr = InstabilityTracker()
    rows: list[tuple[float | None, float | None]] = [(2.0, 0.5)] * 60
    rows += [(2.0, 1.02)] * 20  # one long crossing: one instability (starts at step 62)
    rows += [(2.6, 0.97)] * 10  # the loss rose 1.3×
    rows += [(2.0, 0.97)] * 20
    rows += [(2.0, 1.01)] * 3  # a second instability at step 112, before the horizon
    out = _feed(tr, rows)
    assert out[111] == 1.0
    assert out[112] == pytest.approx(1.3)


def test_missing_and_nonfinite_values_are_skipped() -> None:
    tr = InstabilityTracker()
    rows: list[tuple[float | None, float | None]] = [(1.0, None)] * 55 + [(None, 1.2)] * 3
    rows += [(math.nan, math.nan), (math.inf, 0.9)] + [(1.5, 0.9)] * 110
    out = _feed(tr, rows)
    assert out[-1] == pytest.approx(1.5)  # the non-finite loss is not the peak


@pytest.mark.parametrize("bad", [{"sustain": 0}, {"window": 0}, {"horizon": 0}])
def test_bad_configuration(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        InstabilityTracker(**bad)
