"""The step plan: which probes run at each step, and the forward-hook probes armed for it.

The scheduler says which probe names are due at a step; the plan turns that into the probe
objects both optimizer hooks iterate, `PLAN_STEPS` steps at a time (remade when a cadence
changes or a probe is disabled), so the hot path does a list lookup, not a cadence computation.
It also keeps the off-cadence follow-ups a probe asks for (`Probe.follow`: a stretched
two-secant needs the post-steps of the steps after its own).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from spikewatch.agent._forward_probes import Armed, HookGate
from spikewatch.agent._probe_base import Probe
from spikewatch.agent._scheduler import Scheduler

PLAN_STEPS = 64  # steps whose due probes are worked out at once


class StepPlan:
    """The due probes of the coming step (`due`) and the forward-hook probes armed for it."""

    def __init__(self, scheduler: Scheduler, probes: Sequence[Probe], armed: Sequence[Armed],
                 disabled: set[str], gate: HookGate) -> None:
        self._scheduler = scheduler
        self._probes = probes
        self._armed = armed
        self._disabled = disabled  # the monitor's set: a disabled probe leaves every plan
        self._gate = gate
        self.due: list[Probe] = []  # the probes due at the planned step (both hooks read it)
        self.in_graph: frozenset[str] = frozenset()  # probes capturing in that step's graph
        self._table: list[tuple[list[Probe], frozenset[Armed]]] = []
        self._table_at = 0
        self._version = -1
        self._follow: list[Probe] = []  # probes that asked to run at a coming step

    def plan(self, step: int) -> None:
        """Set the probes due at `step` and arm the forward-hook probes due at it (called when the
        previous step ends)."""
        i = step - self._table_at
        if not 0 <= i < len(self._table) or self._version != self._scheduler.version:
            self._make_table(step)
            i = 0
        self.due, arm = self._table[i]
        if arm or self._gate.open:
            off = self._disabled
            for a in self._armed:
                a.arm(step if a in arm and a.name not in off else None)
            self._gate.open = bool(arm)
            self.in_graph = frozenset(a.name for a in self._armed
                                      if a.armed_step == step and a.traced)

    def clear(self) -> None:
        """Forget the plan (a stale plan would run last step's probes)."""
        self.due = []

    def _make_table(self, start: int) -> None:
        off = self._disabled
        table = []
        for step in range(start, start + PLAN_STEPS):
            due = self._scheduler.due_at(step)
            table.append(([p for p in self._probes if p.name in due and p.name not in off],
                          frozenset(a for a in self._armed if a.name in due)))
        self._table, self._table_at, self._version = table, start, self._scheduler.version

    def run_followed(self, phase: str, step: int, run: Callable[[Probe], float]) -> float:
        """Run (with `run`), off their cadence, the probes that asked for this step in this
        phase; keep those that ask for the next one. Returns the seconds `run` reported."""
        if not self._follow:
            return 0.0
        spent = 0.0
        keep = []
        for p in self._follow:
            if p.follow_phase != phase:
                keep.append(p)
            elif p.follow == step and p not in self.due and p.name not in self._disabled:
                spent += run(p)
                if p.follow == step + 1:
                    keep.append(p)
        self._follow = keep
        return spent

    def take_follow_ups(self) -> None:
        """After a step's probes ran: remember those that asked to run again."""
        for p in self.due:
            if p.follow is not None and p.name not in self._disabled and p not in self._follow:
                self._follow.append(p)
