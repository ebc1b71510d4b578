"""The guard inside the optimizer's step hooks: set this step's values before the update and
put the user's back after it, lift v where the machine says so, then feed the machine the
predictor's reading and the clean loss's swings and stream what it decided (see
`agent._guard`). Never raises into training: the agent catches around each call."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from spikewatch.agent._guard import Guard, GuardMachine
from spikewatch.agent._guard_optimizer import (
    Saved,
    apply_eps,
    apply_lr,
    apply_ramps,
    catch_up_v,
    lift_v,
    raised_eps,
    restore_user_values,
)
from spikewatch.agent._ramp import Events, HparamChange, RampMachine, jump_lifts
from spikewatch.monitor.loss_swings import SwingCounter
from spikewatch.monitor.runaway import RunawayWatch
from spikewatch.monitor.two_secant import TwoSecant

__all__ = ["GuardHooks"]


class GuardHooks:
    """The guard inside the optimizer hooks: scale before the update, undo after it, then read
    the predictor and decide for the next step. Never raises into training."""

    def __init__(self, policy: Guard, clock: Callable[[], float] = time.thread_time) -> None:
        self.machine = GuardMachine(policy)
        self.ramps = RampMachine(policy.ramp_steps, policy.ramp_factor)
        self._saved: Saved = []  # the values set for this step, to put back after it
        self._pending: Events = []  # events decided in the pre-step hook, streamed after it
        self._eps = 0.0  # the raised ε of the current "eps" action
        self.jumps = 0  # jump lifts taken
        self._runaway: RunawayWatch | None = None  # ρ before the update (`monitor.runaway`)
        self._clock = clock  # the agent's work clock, to time the watch
        self.watch_seconds = 0.0  # its time since the last `take_watch_seconds`

    @property
    def actions(self) -> int:
        """Actions taken so far (predicted crossings, ramps, jump lifts and catch-ups of v)."""
        return self.machine.actions + self.ramps.actions + self.jumps + self.machine.catches

    @property
    def active(self) -> bool:
        """Whether an action or a ramp is in force."""
        return self.machine.act is not None or bool(self.ramps.ramps)

    def before(self, step: int, optimizer: Any, changes: list[HparamChange],
               predictor: Any = None) -> None:  # fmt: skip
        """The pre-step hook, after the hyper-parameter watch (`changes`: what it saw)."""
        m = self.machine
        lifted = False
        if changes:
            self._pending += self.ramps.start(step, changes)
            if m.policy.jump_lift and m.policy.ramp_steps == 0:
                lifted = self._lift_jumps(step, optimizer, changes)
        if self.ramps.ramps:
            self._saved = apply_ramps(optimizer, self.ramps, step)
        if m.lifts_v(step):
            lifted = lift_v(optimizer, m.policy.factor) > 0 or lifted
        runaway = self._runaway or self._runaway_watch(predictor)
        if runaway is not None and step <= runaway.armed_until and not m.catches_v(step):
            t0 = self._clock()  # armed: the read is timed on its own account
            rho = runaway.before_step(step, optimizer)
            if rho is not None:
                self._pending += m.catch_now(step, rho)
            self.watch_seconds += self._clock() - t0
        if m.catches_v(step):  # after any lift: v̂ ≥ g² whatever came before
            lifted = catch_up_v(optimizer) > 0 or lifted
        if lifted and hasattr(predictor, "v_changed"):  # it follows v by Adam's recurrence
            predictor.v_changed()
        mult = m.multiplier(step)
        if mult != 1.0:
            self._saved += apply_lr(optimizer, mult)
        weight = m.eps_weight(step)
        if weight > 0.0:
            self._saved += apply_eps(optimizer, self._eps, weight)

    def take_watch_seconds(self) -> float:
        """The runaway watch's time since the last call (the agent reports it, and keeps it out
        of the predictor's budget: the watch reads most where a runaway builds, and must not
        stretch the predictor there)."""
        seconds, self.watch_seconds = self.watch_seconds, 0.0
        return seconds

    def _runaway_watch(self, predictor: Any) -> RunawayWatch | None:
        """The watch for a runaway update before it is made, on the predictor's sample, made
        once (None without a two-secant predictor, or with the catch-up off)."""
        est = getattr(predictor, "est", None)
        if isinstance(est, TwoSecant) and self.machine.policy.catch_rho > 0.0:
            self._runaway = RunawayWatch(est)
        return self._runaway

    def _lift_jumps(self, step: int, optimizer: Any, changes: list[HparamChange]) -> bool:
        """Lift v for the jumps predicted past the edge (`agent._ramp.jump_lifts`); whether any
        v was touched. Each is an action and its release at once (v then decays on its own)."""
        touched = False
        for jl in jump_lifts(changes, self.machine.policy.ratio, self.machine.policy.ramp_factor):
            if lift_v(optimizer, 1.0 / jl.factor, jl.group) == 0:
                continue  # no Adam state (SGD, or before the first step)
            touched = True
            self.jumps += 1
            self.machine.prime("a jump lift")
            self._pending += [("guard_action", {**jl.event, "from_step": step}),
                              ("guard_release", {"action": "jump_lift", "started_at_step": step,
                                                 "released_at_step": step, "steps": 1})]
        return touched

    def after(self, step: int, optimizer: Any, predictor: Any, rise: float,
              emit: Callable[..., None], swings: SwingCounter | None = None,
              spiked_at: int | None = None) -> None:  # fmt: skip
        """The post-step hook: put the user's values back, take the predictor's reading, the
        clean loss's swings (the drain's counter, where `eval_loss` is logged) and the step the
        loss first spiked (the drain's, llm-foundry's rule: it re-arms the guard), stream what
        was decided."""
        if self._saved:
            restore_user_values(self._saved)
            self._saved = []
        events, self._pending = self._pending, []
        if self.ramps.ramps:
            events += self.ramps.finish(step)
        m = self.machine
        if spiked_at is not None and m.policy.rearm:
            m.prime(f"the loss spike at step {spiked_at}")
        # the readings the predictor made at this step's post hook (several after a batch)
        at, fresh = getattr(predictor, "fresh", (-1, []))
        readings: list[tuple[int, list[float]]] = fresh if at == step else []
        for gradient, values in readings:  # a reading is due two steps after its gradient's
            events += m.observe(step, values[1], values[2], rise, made=gradient + 1)
        if swings is not None and (swings.completed, swings.spikes) != (m.swings_seen,
                                                                          m.spikes_seen):
            events += m.observe_swings(step, swings.completed, swings.count(step), swings.spikes)
        if not readings:
            events += m.release_due(step)
        for kind, data in events:
            if kind == "guard_action" and data["action"] == "eps":  # read v once, at the start
                self._eps = raised_eps(optimizer, self.machine.policy.factor)
                data["eps"] = self._eps
            emit(step, kind, **data)
        # last: whatever happens in the watch, this step's decisions are streamed
        runaway = self._runaway or self._runaway_watch(predictor)
        if runaway is not None:
            for _, values in readings:  # a reading past the edge: watch for a runaway
                if values[1] >= m.policy.ratio:
                    runaway.crossed(step)
            if step <= runaway.window_until:  # it may compute ρ from m: timed on its account
                t0 = self._clock()
                runaway.after_step(step)
                self.watch_seconds += self._clock() - t0
            else:  # at most two sums read: the hook's own cost
                runaway.after_step(step)
