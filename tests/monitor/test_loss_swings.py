"""Swings of a clean loss (monitor.loss_swings): what counts, what clears, what expires, and the
spikes of the last `memory` steps."""

from __future__ import annotations

import math

import pytest

from spikewatch.monitor.loss_swings import SwingCounter


def _feed(counter: SwingCounter, values: list[float], start: int = 0) -> list[int]:
    return [counter.update(start + i, v) for i, v in enumerate(values)]


FLOOR = [1.0] * 60  # a full window at the floor


def test_a_swing_counts_once_it_has_come_back_down() -> None:
    out = _feed(SwingCounter(), FLOOR + [1.3, 1.6, 1.8, 1.4, 1.25, 1.1, 1.0] + [1.0] * 20)
    assert out[:64] == [0] * 64  # up to the peak and while above 1.2×: not yet a swing
    assert out[65] == 1  # 1.1 < 1.2 × 1.0: the swing completed
    assert out[-1] == 1


def test_rises_below_high_never_count() -> None:
    assert set(_feed(SwingCounter(), FLOOR + [1.0, 1.45, 1.0] * 40)) == {0}


def test_a_spike_clears_the_count_and_its_aftermath_does_not_count() -> None:
    c = SwingCounter(quiet=50)
    swing = [1.6, 1.0]
    out = _feed(c, FLOOR + swing + [1.0] * 10)
    assert out[-1] == 1
    out = _feed(c, [2.5] + [1.0] * 5 + swing + [1.0] * 60 + swing, start=72)
    assert out[0] == 0  # the spike cleared it
    assert out[7] == 0  # a swing 7 steps after the spike is part of it
    assert out[-1] == 1  # one 69 steps after counts


def test_a_nonfinite_value_is_a_spike() -> None:
    c = SwingCounter()
    assert _feed(c, [*FLOOR, 1.6, 1.0])[-1] == 1
    assert c.update(62, math.nan) == 0


def test_swings_expire_after_span_steps() -> None:
    c = SwingCounter(span=100)
    out = _feed(c, FLOOR + [1.6, 1.0] + [1.0] * 120)
    assert out[61] == 1
    assert out[160] == 1  # completed at step 61 ...
    assert out[161] == 0  # ... gone at 161
    assert c.count(200) == 0


def test_recent_spikes_count_each_spike_once_until_memory_steps_later() -> None:
    c = SwingCounter(memory=100)
    _feed(c, FLOOR)
    assert c.recent_spikes(59) == 0
    _feed(c, [2.5, 3.0, 1.0], start=60)  # one spike over two values
    assert c.recent_spikes(62) == 1
    _feed(c, [1.0] * 20 + [math.inf] + [1.0] * 10, start=63)  # a non-finite value: another
    assert c.recent_spikes(93) == 2
    assert c.recent_spikes(159) == 2  # the first started at 60: counted up to 159 ...
    assert c.recent_spikes(160) == 1  # ... gone at 160
    _feed(c, [1.0] * 100, start=94)
    assert c.recent_spikes(193) == 0
    assert c.spikes == 2  # the total is never cleared


def test_nothing_counts_before_a_full_window() -> None:
    assert set(_feed(SwingCounter(window=50), [1.0, 1.6, 1.0] * 15)) == {0}


def test_the_minimum_is_of_the_window_before_the_value() -> None:
    # the loss falls to 0.5 and rises back to 0.8: 1.6× the window's minimum, a swing
    out = _feed(SwingCounter(), [1.0] * 50 + [0.5] * 10 + [0.8, 0.55])
    assert out[-1] == 1


@pytest.mark.parametrize("kw", [{"low": 1.6}, {"high": 2.5}, {"low": 1.0}, {"window": 0},
                                {"span": 0}, {"memory": 0}, {"quiet": -1}])
def test_bad_parameters_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must be|need 1"):
        SwingCounter(**kw)  # type: ignore[arg-type]
