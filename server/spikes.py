"""The ground truth of a loss spike, defined once: benchmarks, tests, the demo, the report and the
backtest all use it.

A loss spike onset is the first step t with loss[t] > 2 × min(loss[t−50 .. t−1]) (a non-finite
loss counts as a spike; the series' first 50 steps are skipped), and episodes are separated by 50
quiet steps. The rise at step s is loss[s] / min(loss[s−50 .. s−1]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

WINDOW = 50
FACTOR = 2.0
QUIET = 50
HORIZON = 100


def _prior_min(points: Sequence[tuple[int, float]], i: int, window: int) -> float | None:
    """Min of the finite values at steps [step_i − window, step_i − 1]."""
    step = points[i][0]
    vals = []
    j = i - 1
    while j >= 0 and points[j][0] >= step - window:
        if math.isfinite(points[j][1]):
            vals.append(points[j][1])
        j -= 1
    return min(vals) if vals else None


def rise(points: Sequence[tuple[int, float]], i: int, window: int = WINDOW) -> float:
    """loss[i] / min of the previous `window` steps (inf for a non-finite loss, 0 if undefined)."""
    if not math.isfinite(points[i][1]):
        return math.inf
    m = _prior_min(points, i, window)
    if m is None or m <= 0:
        return 0.0
    return points[i][1] / m


def spike_onsets(
    points: Sequence[tuple[int, float]], *, window: int = WINDOW, factor: float = FACTOR,
    quiet: int = QUIET,
) -> list[int]:  # fmt: skip
    """Steps where a loss spike episode starts; `points` are (step, loss) in step order.

    The first `window` steps of the series are skipped (their window is incomplete). This is
    the one ground-truth definition (DESIGN.md §7): benchmarks, tests and the demo use it.
    """
    onsets: list[int] = []
    last_spiking: int | None = None
    for i, (step, _) in enumerate(points):
        if step - points[0][0] < window:
            continue
        if rise(points, i, window) > factor:
            if last_spiking is None or step - last_spiking > quiet:
                onsets.append(step)
            last_spiking = step
    return onsets


def max_rise_after(
    points: Sequence[tuple[int, float]], step: int, *, horizon: int = HORIZON,
    window: int = WINDOW,
) -> float:  # fmt: skip
    """The largest rise at any step in [step, step + horizon]."""
    return max(
        (rise(points, i, window) for i, (s, _) in enumerate(points) if step <= s <= step + horizon),
        default=0.0,
    )
