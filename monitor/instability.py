"""How far the run's last Adam instability moved the loss: the scale a new one is judged by.

An instability starts when the stability ratio holds at or above 1 for `sustain` consecutive
readings (the edge of stability crossed, arXiv:2506.04805). Its *rise* is the largest loss over
the `horizon` steps from its start, divided by the smallest loss of the `window` steps before it
(the ground truth of a spike is a rise of 2; DESIGN.md §7). Adam's instabilities recur, and each
moves the loss further than the last as the loss falls: on the regression-MLP family the first
ones rise 1.01–1.3×, the later ones 1.5× and then 2× and more (docs/early-warning.md). Nothing
measured at a crossing tells how far this one will go (its size scales with a model-dependent
constant), but the run's own last instability does: a new crossing after one that was itself a
minor spike (≥ 1.5×) is the one worth a page, the first crossings of a run are warnings.

`InstabilityTracker.update` takes the drained per-step loss and ratio in step order and returns
`rise`: the rise of the last instability (the running one's rise so far once it is `horizon`
steps old or a new one starts; 1.0 before any). Pure Python over host floats.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["InstabilityTracker"]


class InstabilityTracker:
    """The loss rise of a run's last Adam instability (see the module docstring)."""

    def __init__(self, *, sustain: int = 3, window: int = 50, horizon: int = 100) -> None:
        if sustain < 1 or window < 1 or horizon < 1:
            raise ValueError("sustain, window and horizon must be >= 1")
        self.sustain = sustain
        self.window = window
        self.horizon = horizon
        self.rise = 1.0  # of the last finished instability
        self._losses: deque[tuple[int, float]] = deque()  # (step, loss) of the last `window`
        self._above = 0  # consecutive readings ≥ 1
        self._start: int | None = None  # the running instability's first step
        self._base = math.nan  # min loss of the window before it
        self._peak = math.nan  # max loss since

    def update(self, step: int, loss: float | None, ratio: float | None) -> float:
        """Feed one step (either value may be missing); the current `rise`."""
        if self._start is not None and step - self._start >= self.horizon:
            self._finish()
        if loss is not None and math.isfinite(loss):
            if self._start is not None:
                self._peak = loss if math.isnan(self._peak) else max(self._peak, loss)
            self._losses.append((step, loss))
            while self._losses and self._losses[0][0] < step - self.window:
                self._losses.popleft()
        if ratio is not None and math.isfinite(ratio):
            self._above = self._above + 1 if ratio >= 1.0 else 0
            if self._above == self.sustain and (self._start is None
                                                or step - self._start >= self.sustain):
                if self._start is not None:
                    self._finish()  # a new instability ends the last one's watch
                self._begin(step)
        return self.rise

    def _begin(self, step: int) -> None:
        before = [v for s, v in self._losses if s < step]
        self._start = step
        self._base = min(before) if before else math.nan
        self._peak = math.nan

    def _finish(self) -> None:
        if self._base > 0.0 and not math.isnan(self._peak):
            self.rise = self._peak / self._base
        self._start = None
