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

The *latest* instability counts: once a running one's crossing is over (a reading below
`1 − margin`) and it is `settle` steps old, its rise so far is the run's last word, not the rise
of the one before. A new crossing that comes while the last instability is still being watched
(within `horizon` steps of its start) is judged by how far that one has moved the loss, not by an
older spike, while a crossing still in progress is judged by the instability before it (its own
spike has not come yet): on the benchmark's transformers, whose crossings after a spike come
every 50–250 steps and end in wobbles, this took the false pages from 17 to 10 (the same 13 of
their 15 onsets missed), and an instability already past 1.5× opens the gate before its horizon
ends (2 more onsets paged on the MLP and the quadratic; docs/early-warning.md).

Where the run stands against that instability: `recovery` is the latest loss over the loss it
rose from (the smallest of the `window` steps before it). Adam's instabilities recur because the
run keeps descending after each, its preconditioner keeps decaying, and the next crossing comes
from further down: at the benchmark's pages that came before an MLP's or a CNN's spike the loss
was 2–65 % below that floor (recovery 0.35–0.98). A run at its loss floor crosses too, and there
the transformers' crossings after a spike ended in wobbles: their false pages came at recovery
1.00–1.19, the loss back on its plateau, not past it (docs/early-warning.md; the Adam quadratic,
at its floor too, spiked again there).

`InstabilityTracker.update` takes the drained per-step loss and ratio in step order and returns
`rise`: the rise of the latest instability (1.0 before any). Pure Python over host floats.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["InstabilityTracker"]


class InstabilityTracker:
    """The loss rise of a run's last Adam instability (see the module docstring)."""

    def __init__(self, *, sustain: int = 3, window: int = 50, horizon: int = 100,
                 settle: int = 10, margin: float = 0.01) -> None:  # fmt: skip
        if sustain < 1 or window < 1 or horizon < 1 or settle < 0 or not 0.0 <= margin < 1.0:
            raise ValueError("sustain, window and horizon must be >= 1, settle >= 0, "
                             "0 <= margin < 1")
        self.sustain = sustain
        self.window = window
        self.horizon = horizon
        self.settle = settle
        self.margin = margin
        self.finished_rise = 1.0  # of the last finished instability
        self._finished_base = math.nan  # and the loss it rose from
        self._loss = math.nan  # the latest finite loss
        self._step: int | None = None  # the last step fed
        self._losses: deque[tuple[int, float]] = deque()  # (step, loss) of the last `window`
        self._above = 0  # consecutive readings ≥ 1
        self._start: int | None = None  # the running instability's first step
        self._crossed_back = False  # the running instability's crossing is over
        self._base = math.nan  # min loss of the window before it
        self._peak = math.nan  # max loss since

    def _running_counts(self) -> bool:
        """Whether the running instability is the latest word: its crossing is over, it is
        `settle` steps old and has a rise."""
        return (self._start is not None and self._step is not None and self._crossed_back
                and self._step - self._start >= self.settle
                and self._base > 0.0 and not math.isnan(self._peak))

    @property
    def rise(self) -> float:
        """The rise of the latest instability: the running one's so far once its crossing is
        over and it is `settle` steps old, else the last finished one's (1.0 before any)."""
        return self._peak / self._base if self._running_counts() else self.finished_rise

    @property
    def recovery(self) -> float:
        """The latest loss over the loss the instability `rise` reports rose from: < 1 once the
        run has descended past it; NaN before any instability or loss."""
        base = self._base if self._running_counts() else self._finished_base
        return self._loss / base if base > 0.0 else math.nan

    def update(self, step: int, loss: float | None, ratio: float | None) -> float:
        """Feed one step (either value may be missing); the current `rise`."""
        self._step = step
        if self._start is not None and step - self._start >= self.horizon:
            self._finish()
        if loss is not None and math.isfinite(loss):
            self._loss = loss
            if self._start is not None:
                self._peak = loss if math.isnan(self._peak) else max(self._peak, loss)
            self._losses.append((step, loss))
            while self._losses and self._losses[0][0] < step - self.window:
                self._losses.popleft()
        if ratio is not None and math.isfinite(ratio):
            self._above = self._above + 1 if ratio >= 1.0 else 0
            if self._start is not None and ratio < 1.0 - self.margin:
                self._crossed_back = True
            if self._above == self.sustain and (self._start is None
                                                or step - self._start >= self.sustain):
                if self._start is not None:
                    self._finish()  # a new instability ends the last one's watch
                self._begin(step)
        return self.rise

    def _begin(self, step: int) -> None:
        before = [v for s, v in self._losses if s < step]
        self._start = step
        self._crossed_back = False
        self._base = min(before) if before else math.nan
        self._peak = math.nan

    def _finish(self) -> None:
        if self._base > 0.0 and not math.isnan(self._peak):
            self.finished_rise = self._peak / self._base
            self._finished_base = self._base
        self._start = None
