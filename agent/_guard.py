"""The guard: act inside the job when a loss spike is predicted, before it happens.

`attach(..., guard=True)` (or `guard=Guard(...)`) watches the predictor's reading after every
optimizer step (host floats the agent already has: no extra work, no host-device sync) and, when
the stability ratio has held at or above `ratio` with ρ below `rho` for `sustain` readings
(optionally only after an earlier instability that moved the loss by `rise`), applies a bounded,
temporary mitigation:

- ``"v"`` (default): Adam's second moment is multiplied by ``1 / factor**2`` once, lifting the
  decayed √v̂ that lets the step grow past the edge (seed 000): the effective step shrinks by
  `factor` on every coordinate and grows back as v follows the gradient or decays with β2 (for
  β2 = 0.999 the default lift, 1/0.7² ≈ 2, fades over ~700 steps, for β2 = 0.99 over ~70); if
  the crossing is predicted again while the action holds, v is lifted again, at most once per
  `hold_steps` (readings of gradients from before a lift do not count), and the predictor is
  told to read the lifted v at once;
- ``"lr"``: the learning rate of every param group is multiplied by `factor` for `hold_steps`
  steps, then brought back linearly over `release_steps`. The scaling is applied in the
  optimizer's pre-step hook and undone in its post-step hook, so a learning-rate scheduler that
  sets ``group["lr"]`` keeps working and a checkpoint never saves the scaled value;
- ``"eps"``: Adam's ε of every group is raised for `hold_steps` steps, then brought back
  linearly over `release_steps` (set and undone around each step, as "lr"), to
  (1/factor − 1)·RMS(√v̂) read from the optimizer state when the action starts (one reduction
  per device, the only host-device sync the guard makes, at that step): a coordinate at the RMS
  of √v̂ steps `factor` as far, one whose √v̂ has decayed far below it much less far (those are
  where the instability grows); the lift of v prevented twice as many spikes (docs/guard.md).

The defaults come from `python -m benchmarks.guard` (docs/guard.md). The guard acts on the
crossing `predicted_loss_spike` pages on (ratio ≥ 0.99 with ρ < 0.5 for 2 readings, after an
instability that moved the loss ≥ 50 %, a minor spike; ρ < 0.2, the earlier default, measured the
same until the guard re-read the lifted v, then 3 more onsets than 0.5 and the same controls
untouched). The 50 %: at 30 % it acted on two
near-edge stable controls, whose wobbles reach 1.36–1.40×, at 50 % on none, for one more CNN
onset. After its first action it is re-armed (`rearm`) and acts on the ratio and ρ
alone: the instability it prevented moved the loss little, while the next crossing is as
dangerous (MLP onsets 9 → 5, CNN 3 → 1). A spike of the logged loss (llm-foundry's rule, ≥ 2×
its running mean for more than 4 steps, read on the drain) re-arms it too: a transformer's first
spike often comes with no sustained crossing ahead of it and the wobbles after it reset the rise,
so its later crossings went unacted on (transformer onsets 12 → 8, no control touched).
"v" prevented more spikes than "lr"; `factor` 0.7 as many
as 0.5 at a smaller cost to the loss, 0.9 too few; ρ < 0.08 (the first default) missed most of the
CNN's crossings (their ρ is 0.08–0.2). Under DDP every rank reads the same ratio and ρ
(all-reduced gradients, the same sampled coordinates) and so acts at the same step; `rise` reads
the rank's own loss, which differs between ranks, so under DDP the guard leaves it out (acts at ρ
and the ratio alone, logged). With a sharded optimizer (ZeRO/FSDP) the reading is partial on each
rank and the guard stays off.

In minibatch training the ratio does not see the spikes coming (batch noise keeps √v̂ up; the
spikes are the tail of a continual oscillation of the full-data loss, docs/early-warning.md). Where
the job logs a clean loss as `eval_loss` (full data, a held-out set or a fixed batch), its swings
are the precursor: a spike of it (≥ 2×: the run sits past its edge) triggers the same action,
to head off the next one, and from then on so does a completed swing (≥ 1.5× its 50-step minimum
and back, `monitor.loss_swings`, read from the drain) with at least `swings` (2) in 300 steps (for
"v", lifted again at most once per hold). Neither can touch a run whose clean loss never spiked:
near the edge runs swing whether or not they will spike, and counting swings before a first spike
(`swings_before_spike=True`, the default until 2026-12-08) acted on 6 of 17 near-edge minibatch
runs that never spiked and made one of them spike three times, for 8 more onsets prevented in
114 (docs/guard.md). `swings=0` turns both off. Under DDP each rank's eval_loss may differ: off
there.

A hyper-parameter change that lowers the stability threshold by `ramp_factor` or more in one step
(a 10× lr jump, β1 0.9 → 0.5) and that the last reading predicts past the edge (the hparam page's
condition) is met, whatever the action, by a *jump lift* (`jump_lift`, default on): Adam's v of
the changed group × the threshold drop² at the changed step, an action and its release at once,
and the guard is re-armed by it (`agent._ramp.jump_lifts`). With `ramp_steps` > 0 such jumps are
instead applied gradually over that many steps (`agent._ramp`); the ramp is off by default: on
the suite's hparam-jump runs it did not prevent the spikes, the jump lift did (docs/guard.md).

A spike the guard did not prevent can run away: the gradient outgrows Adam's second moment, every
coordinate steps many times lr, and with a slow v (β2 = 0.999) the run does not heal: two of the
suite's transformers exploded 100× and stayed 20× above their floor for the rest of the run. A
reading with ρ = ‖g‖/‖√v̂‖ ≥ `catch_rho` (12) is met, whatever the action and the gates, by a
*catch-up of v* at the next step: exp_avg_sq ≥ g²·(1 − β2^t) on every coordinate (v̂ ≥ g², no
step much past lr), an action and its release at once, and the guard re-armed. v includes the
gradient it divides, so ρ ≤ √((1 − β2^t)/(1 − β2)): 10 at β2 = 0.99, whose v catches up within
~100 steps by itself, 31.6 at 0.999. On the suite ρ stays ≤ 7.8 on the stable controls and ≤ 9.6
at the β2 = 0.99 transformers' spikes; the runaways read 16–24 (docs/guard.md). A reading comes
two steps after its gradient, at a runaway's peak; so where the gradient the last step applied
had ρ ≥ 2, the next pre-steps read ρ of the gradient about to be applied on the same sample
(`monitor.runaway`, CPU models) and catch v up before that update (`read: "before_update"` in
the event; `"reading"` otherwise). `catch_rho=0` turns both off.

`GuardMachine` is the pure state machine (readings in, the multiplier and events out), with no
torch in it; `agent._guard_hooks` runs it in the optimizer's step hooks and
`agent._guard_optimizer` touches the optimizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["Guard", "GuardMachine"]

Action = Literal["lr", "v", "eps"]
# A reading is of the gradient before last (`monitor.two_secant`): the first one the lift of v at
# step s shapes throughout is made at the end of step s + 2.
READING_LAG = 3
Trigger = Literal["stability_ratio", "loss_swings", "clean_loss_spike", "runaway"]
"""What decided an action: the predicted crossing, the clean loss's swings or its spike, or a
runaway update (ρ ≥ `catch_rho`: the catch-up of v)."""


Finite = Annotated[float, Field(allow_inf_nan=False)]  # strict: an int is taken, a bool refused


class Guard(BaseModel):
    """The guard's policy (see the module docstring); a value out of its bounds is a ValueError
    naming the knob, e.g. ``Guard(factor=1.0): Input should be less than 1``."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    action: Action = "v"
    factor: Annotated[Finite, Field(ge=0.05, lt=1.0)] = 0.7
    hold_steps: Annotated[int, Field(ge=1, le=10000)] = 50
    release_steps: Annotated[int, Field(ge=0, le=10000)] = 50
    ratio: Annotated[Finite, Field(ge=0.5, le=2.0)] = 0.99
    rho: Annotated[Finite, Field(gt=0.0, le=10.0)] = 0.5
    sustain: Annotated[int, Field(ge=1, le=100)] = 2
    # only after a ≥ 50 % instability (a minor spike, as the page); 1.0: every crossing
    rise: Annotated[Finite, Field(ge=1.0, le=100.0)] = 1.5
    # > 0: apply threshold-dropping hyper-parameter jumps over this many steps (0 or 2..10000)
    ramp_steps: Annotated[int, Field(ge=0, le=10000)] = 0
    # the threshold drop in one step that makes a change a jump
    ramp_factor: Annotated[Finite, Field(gt=1.0, le=1000.0)] = 2.0
    # a jump predicted past the edge (ratio × drop ≥ `ratio`) lifts Adam's v by the drop² at the
    # changed step (`agent._ramp.jump_lifts`; not with a ramp, which handles jumps its own way)
    jump_lift: bool = True
    # after its first action (or a jump lift, a catch-up, a spike of the loss) the guard acts on
    # the ratio and rho alone: an instability it prevented moved the loss little, yet the next
    # crossing is as dangerous
    rearm: bool = True
    # > 0: where the job logs a clean `eval_loss`, a completed swing of it with at least this
    # many in 300 steps, or a spike of it, triggers the action too (minibatch training; 0: off)
    swings: Annotated[int, Field(ge=0, le=100)] = 2
    # False: a swing counts only once the clean loss has spiked (the page's own condition,
    # `clean_loss_swings_after_spike`): a run that never spikes is never touched
    swings_before_spike: bool = False
    # > 0: a reading with ρ = ‖g‖/‖√v̂‖ at or above this (the gradient has outgrown Adam's second
    # moment: an update of about ρ× lr per coordinate, runaway) catches v up to g² at the next
    # step, whatever the action and the gates (0: off; at least 2, ρ ≲ 1 in ordinary training)
    catch_rho: Annotated[Finite, Field(ge=0.0, le=1000.0)] = 12.0

    if not TYPE_CHECKING:  # type checkers keep the knobs' signature from the fields

        def __init__(self, **knobs: Any) -> None:
            try:
                super().__init__(**knobs)
            except ValidationError as e:
                err = e.errors()[0]
                name = err["loc"][0] if err["loc"] else "?"
                why = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
                raise ValueError(f"Guard({name}={err['input']!r}): {why}") from None

    @field_validator("ramp_steps")
    @classmethod
    def _ramp_needs_two_steps(cls, steps: int) -> int:
        if steps == 1:
            raise ValueError("must be 0 (off) or at least 2")
        return steps

    @field_validator("catch_rho")
    @classmethod
    def _catch_above_ordinary_rho(cls, rho: float) -> float:
        if 0.0 < rho < 2.0:
            raise ValueError("must be 0 (off) or at least 2 (ρ ≲ 1 in ordinary training)")
        return rho


@dataclass
class Act:
    """One guard action, as streamed (`guard_action` at its start, `guard_release` at its end)."""

    start: int  # the first step it scales
    ratio: float  # the reading that decided it (the last one, for swings)
    rho: float
    rise: float
    trigger: Trigger = "stability_ratio"
    swings: int = 0  # the clean loss's recent swings, for "loss_swings"
    extended: int = 0  # re-triggers while it held
    lifted_at: int = -1  # the "v" action: the step of its last lift
    lifts: int = 0


class GuardMachine:
    """Readings in, the multiplier for each step and the events out. Pure: no torch, no clock."""

    def __init__(self, policy: Guard) -> None:
        self.policy = policy
        self.act: Act | None = None
        self._above = 0  # consecutive readings meeting the condition
        self._until = -1  # last step of the hold (inclusive)
        self._reading = (math.nan, math.nan)  # the last (ratio, rho) taken
        self.swings_seen = 0  # completed swings of the clean loss already taken
        self.spikes_seen = 0  # and its spikes
        self.actions = 0
        self.primed = False  # re-armed by a jump lift, a catch-up or a loss spike (an instability)
        self.armed_by = ""  # what re-armed it, for the events' `why`
        self.catches = 0  # catch-ups of v taken
        self._caught_at = -READING_LAG  # the step of the last catch-up of v

    def observe(self, step: int, ratio: float, rho: float, rise: float, made: int | None = None
                ) -> list[tuple[str, dict[str, Any]]]:  # fmt: skip
        """Take a reading at the end of `step`; events to stream. The decision applies from
        `step + 1` on. `made`: the step at whose end the reading was due (earlier for the
        readings of a batch; `step` by default)."""
        p = self.policy
        act = self.act
        made = step if made is None else made
        if made < self._caught_at + READING_LAG or (
                act is not None and act.lifts and made < act.lifted_at + READING_LAG):
            return []  # a reading of a gradient the lift has not reached yet: not evidence
        if 0.0 < p.catch_rho <= rho < math.inf:  # a non-finite ρ is a broken reading, not a
            # runaway: catching v up to it would poison v for good
            self._above = 0
            return self._catch(step, ratio, rho) + self.release_due(step)
        self._reading = (ratio, rho)
        hot = (math.isfinite(ratio) and ratio >= p.ratio and math.isfinite(rho) and rho < p.rho
               and (rise >= p.rise or (p.rearm and (self.actions > 0 or self.primed))))
        self._above = self._above + 1 if hot else 0
        if self._above >= p.sustain:
            self._above = 0
            return self._trigger(step, ratio, rho, rise, "stability_ratio")
        return self.release_due(step)

    def catch_now(self, step: int, rho: float) -> list[tuple[str, dict[str, Any]]]:
        """ρ of the gradient `step` is about to apply, read before its update
        (`monitor.runaway`): at or above `catch_rho`, v is caught up at `step` itself; the
        events to stream."""
        if not 0.0 < self.policy.catch_rho <= rho < math.inf or self.catches_v(step):
            return []
        self._above = 0
        return self._catch(step - 1, None, rho)

    def _catch(self, step: int, ratio: float | None, rho: float
               ) -> list[tuple[str, dict[str, Any]]]:  # fmt: skip
        """Catch v up to g² at `step + 1`: an action and its release at once (v then decays on
        its own), and the guard is re-armed (the run met an instability). `ratio` None: ρ was
        read before the update, with no reading (`catch_now`)."""
        self.catches += 1
        self.prime("a catch-up of v")
        self._caught_at = step + 1
        read = ({"read": "before_update"} if ratio is None
                else {"read": "reading", "stability_ratio": ratio})
        return [("guard_action", {
            "action": "v_catch_up", "from_step": step + 1, "trigger": "runaway", **read,
            "rho": rho, "catch_rho": self.policy.catch_rho,
            "why": (f"rho {rho:.1f} >= {self.policy.catch_rho:g}: the gradient has outgrown "
                    f"Adam's second moment {rho:.0f}-fold and the update runs away; v is caught "
                    "up to g^2 so that no coordinate steps much more than lr")}),
            ("guard_release", {"action": "v_catch_up", "started_at_step": step + 1,
                               "released_at_step": step + 1, "steps": 1})]

    def prime(self, why: str) -> None:
        """Re-arm the guard without an action of its own (the run met an instability: a jump
        lift, a catch-up of v, a spike of the loss); with `rearm`, crossings are then acted on
        without the rise."""
        if not self.primed:  # the first cause names it (its own earlier action, if any)
            self.primed, self.armed_by = True, "" if self.actions else why

    def catches_v(self, step: int) -> bool:
        """Whether v is caught up to the gradient at `step` (a runaway reading at the last)."""
        return self._caught_at == step

    def release_due(self, step: int) -> list[tuple[str, dict[str, Any]]]:
        """Let go at `step` if the hold and the way back are over (with each reading, and on
        the steps without one: a swing-triggered action needs no reading to end)."""
        p, act = self.policy, self.act
        if act is None or step < self._until + p.release_steps:
            return []
        self.act = None
        return [("guard_release", {
            "action": p.action, "started_at_step": act.start, "released_at_step": step,
            "steps": step - act.start + 1, "extended": act.extended,
            **({"lifts": act.lifts} if p.action == "v" else {})})]

    def observe_swings(self, step: int, completed: int, recent: int, spikes: int = 0
                       ) -> list[tuple[str, dict[str, Any]]]:  # fmt: skip
        """Take the clean loss's swings and spikes counted by the end of `step` (`completed`
        swings ever, `recent` in the counter's span, `spikes` ever; `monitor.loss_swings`): a
        newly completed swing with at least `swings` recent ones triggers the action as a
        predicted crossing does, and so does a new spike (the run sits past its edge: the
        action heads off the next one). In minibatch training the ratio does not see the
        spikes coming; the swings do. `swings=0`: neither."""
        swung, self.swings_seen = completed > self.swings_seen, completed
        spiked, self.spikes_seen = spikes > self.spikes_seen, spikes
        if self.policy.swings == 0:
            return []
        ratio, rho = self._reading
        if spiked:
            return self._trigger(step, ratio, rho, 0.0, "clean_loss_spike")
        if swung and recent >= self.policy.swings and (
                self.policy.swings_before_spike or self.spikes_seen > 0):
            return self._trigger(step, ratio, rho, 0.0, "loss_swings", recent)
        return []

    def _trigger(self, step: int, ratio: float, rho: float, rise: float, trigger: Trigger,
                 swings: int = 0) -> list[tuple[str, dict[str, Any]]]:  # fmt: skip
        """Act from `step + 1` (or hold on, lifting v again at most once per hold)."""
        p = self.policy
        act = self.act
        events: list[tuple[str, dict[str, Any]]] = []
        if act is None:
            self.actions += 1
            self.act = act = Act(step + 1, ratio, rho, rise, trigger, swings)
            if p.action == "v":
                act.lifted_at, act.lifts = step + 1, 1
            events.append(("guard_action", self._describe(act, step)))
        else:  # still predicted while it acts: hold again from here
            act.extended += 1
            if p.action == "v" and step + 1 >= act.lifted_at + p.hold_steps:
                events.append(("guard_action",
                               self._lift_again(act, step, ratio, rho, trigger, swings)))
        self._until = step + p.hold_steps
        return events

    def strength(self, step: int) -> float:
        """How much of the action is in force at `step`: 1 through the hold, then down to 0
        linearly over `release_steps`; 0 when not acting."""
        if self.act is None:
            return 0.0
        if step <= self._until:
            return 1.0
        k = self.policy.release_steps
        return max(0.0, 1.0 - (step - self._until) / k) if k > 0 else 0.0

    def multiplier(self, step: int) -> float:
        """The learning-rate multiplier at `step` (1.0 when not acting)."""
        if self.policy.action != "lr":
            return 1.0
        return 1.0 - (1.0 - self.policy.factor) * self.strength(step)

    def eps_weight(self, step: int) -> float:
        """The share of the raised ε at `step` (0: the user's ε; the "eps" action only)."""
        return self.strength(step) if self.policy.action == "eps" else 0.0

    def _lift_again(self, act: Act, step: int, ratio: float, rho: float, trigger: Trigger,
                    swings: int) -> dict[str, Any]:  # fmt: skip
        """The crossing (or a swing) is back although v was lifted (it decayed again, or the
        sharpness grew): lift once more from `step + 1` (at most once per hold); the event
        naming its action."""
        last, act.lifted_at = act.lifted_at, step + 1
        act.lifts += 1
        self.actions += 1
        event = self._describe(act, step)
        event.pop("loss_swings", None)  # this lift's own trigger replaces the action's
        event.update(stability_ratio=ratio, rho=rho, lift=act.lifts, started_at_step=act.start,
                     **_trigger_fields(trigger, swings),
                     why=(f"{self._cause(trigger, ratio, rho, swings)} again, {step + 1 - last} "
                          f"steps after the last lift of v (lift {act.lifts} of this action)"))
        return event

    def lifts_v(self, step: int) -> bool:
        """Whether the "v" action lifts v at `step` (its first step, or a renewed lift)."""
        return self.act is not None and self.policy.action == "v" and self.act.lifted_at == step

    def _cause(self, trigger: Trigger, ratio: float, rho: float, swings: int) -> str:
        p = self.policy
        if trigger == "clean_loss_spike":
            return ("the clean loss (eval_loss) spiked >= 2x its recent minimum: the run sits past "
                    "its edge, and the action heads off the next spike")
        if trigger == "loss_swings":
            return (f"the clean loss (eval_loss) completed {swings} swings of >= 1.5x its recent "
                    f"minimum in 300 steps (>= {p.swings}: minibatch training's precursor"
                    f"{'' if p.swings_before_spike else ', after a spike of it'})")
        return (f"stability ratio {ratio:.3f} >= {p.ratio} with rho {rho:.3f} < {p.rho} for "
                f"{p.sustain} readings")

    def _describe(self, act: Act, step: int) -> dict[str, Any]:
        p = self.policy
        if p.rise <= 1.0 or act.trigger != "stability_ratio":
            gate = ""
        elif act.rise < p.rise:
            gate = f", re-armed by {self.armed_by or 'its earlier action'}"
        else:
            gate = f", after an instability that moved the loss {act.rise:.2f}x"
        return {"action": p.action, "factor": p.factor, "hold_steps": p.hold_steps,
                "release_steps": p.release_steps, "from_step": step + 1,
                **_trigger_fields(act.trigger, act.swings),
                "stability_ratio": act.ratio, "rho": act.rho, "instability_rise": act.rise,
                "why": self._cause(act.trigger, act.ratio, act.rho, act.swings) + gate}


def _trigger_fields(trigger: Trigger, swings: int) -> dict[str, Any]:
    """The event's `trigger`, and the swing count where the swings decided."""
    return {"trigger": trigger, **({"loss_swings": swings} if trigger == "loss_swings" else {})}
