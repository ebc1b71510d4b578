"""Swings of a clean loss: what comes before a loss spike in minibatch training.

A full-batch run spikes out of a quiet floor once Adam's preconditioner has decayed, and the
stability ratio announces it. A minibatch run does not: batch noise keeps √v̂ up (ρ 0.3–0.8), no
curvature measure comes near the edge, and its spikes are the tail of a continual oscillation of
the full-data loss, which swings 1.5–1.9× its recent minimum for tens of steps before one swing
passes 2× (docs/early-warning.md, "Minibatch spikes"). The swings themselves are the warning: on
the benchmark's minibatch runs the full-data loss never rose 1.5× on a stable control, and a
completed 1.5× swing came before 40 of their 45 onsets.

The batch loss cannot show them (its batch-to-batch noise is 1.5× its minimum on half the steps of
a stable run): the series must be *clean*, the loss on the full data, a held-out set or a fixed
batch, logged as `eval_loss` at least every few steps.

A *swing* starts when the clean loss reaches `high`× the smallest value of the `window` steps
before it and completes when it falls back under `low`× that minimum; a value ≥ `spike`× the
minimum (or a non-finite one) is a spike, which clears the count, and swings that complete
within `quiet` steps after a spike belong to its aftermath and are not counted.
`SwingCounter.update(step, value)` returns the completed swings of the last `span` steps; so does
`count(step)` between values; `completed` counts every swing counted so far and `spikes` every
spike (what the guard watches for a new one), `recent_spikes(step)` the spikes of the last
`memory` steps. A run that has spiked and swings again sits past its edge: on 88 minibatch runs
(benchmarks.early_warning.swing_study) a swing after a spike in the last 1000 steps came before
233 of the 341 onsets (not the first of a run, which has no spike before it), 6 % of such
swings were followed by no 1.5× rise, and no run that never spiked has one, which is what the
default pack pages on. Pure Python over host floats.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["SwingCounter"]


class SwingCounter:
    """Completed swings of a clean loss since its last spike (see the module docstring)."""

    def __init__(self, *, high: float = 1.5, low: float = 1.2, spike: float = 2.0,
                 window: int = 50, span: int = 300, quiet: int = 50,
                 memory: int = 1000) -> None:  # fmt: skip
        if not 1.0 < low < high < spike:
            raise ValueError(f"need 1 < low < high < spike, got {low}, {high}, {spike}")
        if window < 1 or span < 1 or memory < 1 or quiet < 0:
            raise ValueError("window, span and memory must be >= 1, quiet >= 0")
        self.high, self.low, self.spike = high, low, spike
        self.window, self.span, self.quiet, self.memory = window, span, quiet, memory
        self._values: deque[tuple[int, float]] = deque()  # (step, value) of the last `window`
        self._first: int | None = None  # the first step seen: a full window must precede a test
        self._base: float | None = None  # the running swing's minimum (None: no swing)
        self._last_spike: int | None = None
        self._done: deque[int] = deque()  # the steps at which counted swings completed
        self._spiked_at: deque[int] = deque()  # the first steps of the last `memory` steps' spikes
        self.completed = 0  # every swing counted so far, never cleared
        self.spikes = 0  # every spike seen so far (consecutive spiking values: one)

    def update(self, step: int, value: float) -> int:
        """Feed the clean loss of one step (steps increasing); the current count."""
        if not math.isfinite(value):
            self._spiked(step)
            return 0
        if self._first is None:
            self._first = step
        while self._values and self._values[0][0] < step - self.window:
            self._values.popleft()
        while self._done and self._done[0] <= step - self.span:
            self._done.popleft()
        while self._spiked_at and self._spiked_at[0] <= step - self.memory:
            self._spiked_at.popleft()
        if self._values and step - self._first >= self.window:
            self._test(step, value, min(v for _, v in self._values))
        self._values.append((step, value))
        return self.count(step)

    def count(self, step: int) -> int:
        """The swings completed in the `span` steps up to `step` (read-only: the guard asks
        between the drains that feed the counter)."""
        return sum(1 for done in self._done if step - self.span < done <= step)

    def recent_spikes(self, step: int) -> int:
        """The spikes that started in the `memory` steps up to `step` (read-only)."""
        return sum(1 for s in self._spiked_at if step - self.memory < s <= step)

    def _test(self, step: int, value: float, low_point: float) -> None:
        if low_point <= 0.0:
            return
        if value >= self.spike * low_point:
            self._spiked(step)
        elif self._base is None:
            if value >= self.high * low_point:
                self._base = low_point
        elif value < self.low * self._base:
            self._base = None
            if self._last_spike is None or step - self._last_spike > self.quiet:
                self._done.append(step)
                self.completed += 1

    def _spiked(self, step: int) -> None:
        if self._last_spike is None or step > self._last_spike + 1:
            self.spikes += 1  # a new one: not the next value of the spike before
            self._spiked_at.append(step)
        self._done.clear()
        self._base = None
        self._last_spike = step
