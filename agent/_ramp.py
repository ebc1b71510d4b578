"""The guard's ramp: a hyper-parameter change that drops the stability threshold, applied gradually.

Raising Adam's learning rate or lowering its β1 lowers the stability threshold 2(1+β1)/((1−β1)η)
at once (`monitor.hparams`): a run that sat below its edge is past it at the next step, and the
loss spikes a few steps later (the early-warning suite's hparam-jump family spiked two steps after
a 10× lr jump and after β1 0.9 → 0.5). Warm-up exists for the same reason. When one step's change
lowers the threshold by at least `ramp_factor` (a jump, not a schedule: smooth schedules move it
by a few per cent a step, and the first steps of training, before any reading, are left alone),
the guard applies it over `ramp_steps` steps instead, geometrically in η and in 1−β1 (the factors
the threshold is made of):

    η_k = η_user · (η_old/η_new)^g_k,   (1−β1)_k = (1−β1_user) · ((1−β1_old)/(1−β1_new))^g_k,
    g_k = 1 − (k+1)/N

for k = 0 … N−1, as a multiplier on the value the user's code set, so a scheduler that keeps
writing the group's value keeps working. Like the guard's "lr" action it is applied in the
optimizer's pre-step hook and undone in its post-step hook: the optimizer state and checkpoints
hold the user's values. `RampMachine` is pure (no torch): changes in, per-step values and events
out. The ramp is off by default: it did not prevent the suite's spikes (docs/guard.md).

The default instead is the *jump lift* (`jump_lifts`): when such a jump is predicted to put the
run past its edge (the last measured ratio times the threshold drop ≥ the guard's `ratio`: the
condition the hparam page fires on), Adam's v of the changed group is multiplied by the square of
the threshold drop (at most `MAX_JUMP_LIFT`²) at the changed step, so the step starts from the
same distance to the edge as before the change and the change comes in as v decays, while the
guard, re-armed by it, watches the crossings that follow. On the suite's β1 0.9 → 0.5 and
lr 0.001 → 0.01 runs it removed the spike the jump causes (docs/guard.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Events = list[tuple[str, dict[str, Any]]]
MAX_JUMP_LIFT = 20.0  # the largest factor on √v of one jump lift (v × 400)


@dataclass(frozen=True, slots=True)
class HparamChange:
    """A change the hyper-parameter watch saw at a pre-step hook (`monitor.hparams`)."""

    group: int
    hparam: str  # "lr" or "beta1" (Adam's β1, SGD's momentum)
    old: float
    new: float
    threshold_factor: float  # threshold before / after: > 1 when the change lowers it
    ratio_after: float | None  # the last measured stability ratio times that factor


@dataclass(frozen=True, slots=True)
class Ramp:
    """One change being applied gradually from step `start` over `steps` steps."""

    change: HparamChange
    start: int
    steps: int

    def gap(self, step: int) -> float:
        """The share of the change still held back at `step` (1 − (k+1)/N; 0 when done)."""
        return max(0.0, 1.0 - (step - self.start + 1) / self.steps)

    def value(self, user: float, step: int) -> float:
        """The value to use at `step` given the user's current value."""
        c, gap = self.change, self.gap(step)
        if c.hparam == "lr":
            return user * math.pow(c.old / c.new, gap)
        return 1.0 - (1.0 - user) * math.pow((1.0 - c.old) / (1.0 - c.new), gap)


class RampMachine:
    """Which changes are ramped, and for how long. Pure: no torch, no clock."""

    def __init__(self, steps: int, factor: float) -> None:
        self.steps = steps
        self.factor = factor
        self.ramps: list[Ramp] = []
        self.actions = 0

    def start(self, step: int, changes: list[HparamChange]) -> Events:
        """Ramp, from `step` on, the changes that drop the threshold by `factor` or more."""
        events: Events = []
        for c in changes:
            if not self._ramps(c):
                continue
            self.ramps = [r for r in self.ramps
                          if (r.change.group, r.change.hparam) != (c.group, c.hparam)]
            self.ramps.append(Ramp(c, step, self.steps))
            self.actions += 1
            events.append(("guard_action", {
                "action": "ramp", "hparam": c.hparam, "group": c.group, "old": c.old,
                "new": c.new, "ramp_steps": self.steps, "from_step": step,
                "threshold_factor": c.threshold_factor,
                "stability_ratio_after": c.ratio_after,
                "why": (f"{c.hparam} {c.old:g} -> {c.new:g} lowers the stability threshold "
                        f"{c.threshold_factor:.2f}x in one step: applied over {self.steps} "
                        "steps")}))
        return events

    def _ramps(self, c: HparamChange) -> bool:
        if self.steps <= 0 or c.ratio_after is None or c.threshold_factor < self.factor:
            return False  # off, before the first reading (the start of training), or no jump
        if c.hparam == "lr":
            return 0.0 < c.old < c.new
        return c.hparam == "beta1" and 0.0 <= c.new < c.old < 1.0

    def due(self, step: int) -> list[Ramp]:
        """The ramps to apply at `step`."""
        return [r for r in self.ramps if r.gap(step) > 0.0]

    def finish(self, step: int) -> Events:
        """After `step`: the ramps that reached their new value end (a `guard_release` each)."""
        done = [r for r in self.ramps if r.gap(step + 1) == 0.0]
        self.ramps = [r for r in self.ramps if r not in done]
        return [("guard_release", {
            "action": "ramp", "hparam": r.change.hparam, "group": r.change.group,
            "started_at_step": r.start, "released_at_step": step + 1,
            "steps": step + 1 - r.start + 1}) for r in done]


@dataclass(frozen=True, slots=True)
class JumpLift:
    """Multiply the v of param group `group` by `factor`² at the changed step."""

    group: int
    factor: float
    event: dict[str, Any]


def jump_lifts(changes: list[HparamChange], ratio: float, jump_factor: float) -> list[JumpLift]:
    """The jump lifts due for this pre-step hook's `changes` (see the module docstring): a change
    that lowers the threshold by `jump_factor` or more, with the measured ratio times that drop
    ≥ `ratio`; one per group, for the largest drop."""
    best: dict[int, HparamChange] = {}
    for c in changes:
        if (c.ratio_after is None or c.ratio_after < ratio or c.threshold_factor < jump_factor
                or not math.isfinite(c.threshold_factor)):  # fmt: skip
            continue
        if c.group not in best or c.threshold_factor > best[c.group].threshold_factor:
            best[c.group] = c
    out = []
    for g, c in sorted(best.items()):
        f = min(c.threshold_factor, MAX_JUMP_LIFT)
        out.append(JumpLift(g, f, {
            "action": "jump_lift", "hparam": c.hparam, "group": g, "old": c.old, "new": c.new,
            "threshold_factor": c.threshold_factor, "stability_ratio_after": c.ratio_after,
            "v_factor": f * f,
            "why": (f"{c.hparam} {c.old:g} -> {c.new:g} lowers the stability threshold "
                    f"{c.threshold_factor:.2f}x, predicted ratio {c.ratio_after:.2f} >= {ratio}: "
                    f"v of group {g} x {f * f:.3g}, so the step starts as far from the edge as "
                    "before the change")}))
    return out
