"""The rule engine: per run and rule a small state machine, driven by observations as they arrive.

    condition true   → PENDING (first step/time, value)
    held for_steps consecutive observations and for_seconds of step time → FIRING
    condition false  → INACTIVE (if it was pending) or, after keep_firing_steps more false
                       observations, RESOLVED (if it was firing)

`for_seconds` is measured on the observations' own `time` (the training step's clock), so a replay
gives the same transitions as the live run. An observation whose step is not after the run's
current one (up to `late_steps` back, e.g. a sharded metric combined once the last rank reported)
is late data: it feeds the carried values and is evaluated with the next observation; further
back, or with a `resumed` event, it is a restart of the run from a checkpoint.

Memory is bounded: per run only the metrics the rules read and their windows; runs not observed
for `idle_seconds` (of the injected `clock`) or beyond `max_runs` (least recently observed first)
are forgotten, which resolves their alerts the way a vanished series resolves a Prometheus alert.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from spikewatch.server.rules._conditions import LATE_STEPS, EventLike, Signals, evaluate
from spikewatch.server.rules._errors import RuleError
from spikewatch.server.rules._model import Rule
from spikewatch.server.types import AlertState, Observation, Severity, Transition

_PLACEHOLDER = re.compile(r"\{(run|rule|step|value|severity)\}")


@dataclass(frozen=True, slots=True)
class ActiveAlert:
    """An alert pending or firing on a run, as the engine holds it after the run's last
    observation; each observation that changes it replaces it, so `active()` hands out these."""

    run: str
    rule: str
    severity: Severity
    state: AlertState  # PENDING or FIRING
    since_step: int  # where the condition began to hold
    since_time: float
    value: float  # what decided the latest evaluation
    held: int = 0  # observations that held while pending
    fired_step: int | None = None
    failed: int = 0  # consecutive observations that failed since it fired


class _Run:
    __slots__ = ("last_step", "last_time", "seen", "signals", "slots")

    def __init__(self, signals: Signals, seen: float) -> None:
        self.signals = signals
        self.slots: dict[str, ActiveAlert] = {}
        self.seen = seen
        self.last_step = 0
        self.last_time = 0.0


class RuleEngine:
    """Evaluates rules per observation; deterministic; thread-safe."""

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        max_runs: int = 1000,
        idle_seconds: float = 6 * 3600.0,
        late_steps: int = LATE_STEPS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_runs < 1 or idle_seconds <= 0 or late_steps < 0:
            raise ValueError("max_runs must be ≥ 1, idle_seconds > 0 and late_steps ≥ 0")
        self._late_steps = late_steps
        self._set_rules(rules)
        self._max_runs = max_runs
        self._idle = idle_seconds
        self._clock = clock
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._lock = threading.Lock()

    def _set_rules(self, rules: Sequence[Rule]) -> None:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise RuleError("duplicate rule names")
        self._rules = tuple(rules)
        self._metrics = frozenset(m for r in rules for m in r.metrics())
        windows: dict[str, int] = {}
        for r in rules:
            for m, n in r.windows().items():
                windows[m] = max(windows.get(m, 0), n)
        self._windows = windows

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    def replace_rules(self, rules: Sequence[Rule]) -> list[Transition]:
        """Swap in a new rule set (a reload). Alerts of rules kept by name stay open with their
        counts; alerts of removed rules end now (returned as transitions); every run's rolling
        windows start afresh, since the new rules may read other metrics over other spans."""
        with self._lock:
            old = {r.name: r for r in self._rules}
            self._set_rules(rules)
            kept = {r.name: r for r in self._rules}
            out: list[Transition] = []
            for name, run in self._runs.items():
                for rule_name, alert in list(run.slots.items()):
                    if rule_name in kept:  # open alerts take the reloaded rule's severity
                        run.slots[rule_name] = replace(alert, severity=kept[rule_name].severity)
                        continue
                    del run.slots[rule_name]
                    state = (AlertState.RESOLVED if alert.state is AlertState.FIRING
                             else AlertState.INACTIVE)
                    t = self._transition(old[rule_name], name, state, run.last_step,
                                         run.last_time, alert.value)
                    out.append(_annotated(t, "rule removed by a reload"))
                run.signals = Signals(self._metrics, self._windows, self._late_steps)
            return out

    def observe(self, obs: Observation, events: Iterable[EventLike] = ()) -> list[Transition]:
        """Evaluate every rule on one committed observation; return the transitions, in rule order.

        `events` may carry the step's events with their data (for `where` filters); the event
        types in `obs.events` alone satisfy event conditions without a filter. The result may
        also hold transitions of other runs forgotten for idleness.
        """
        with self._lock:
            now = self._clock()
            out = self._expire(now, keep=obs.run)
            run = self._runs.get(obs.run)
            if run is None:
                while len(self._runs) >= self._max_runs:
                    out += self._forget(next(iter(self._runs)))
                run = _Run(Signals(self._metrics, self._windows, self._late_steps), now)
                self._runs[obs.run] = run
            else:
                self._runs.move_to_end(obs.run)
                run.seen = now
            sig = run.signals
            if not sig.begin(obs, events):
                return out  # late data: folded into the run's signals, evaluated with the next
            run.last_step, run.last_time = obs.step, obs.time
            for rule in self._rules:
                holds, value = evaluate(rule.condition, sig)
                out += self._advance(rule, run, obs, holds, value)
            sig.commit()
            return out

    def sweep(self) -> list[Transition]:
        """Forget runs idle longer than `idle_seconds` (for a caller that wants a timer)."""
        with self._lock:
            return self._expire(self._clock(), keep=None)

    def forget(self, run: str) -> list[Transition]:
        """Drop a run's state, resolving its alerts."""
        with self._lock:
            return self._forget(run) if run in self._runs else []

    def active(self) -> list[ActiveAlert]:
        """Snapshot of pending and firing alerts of every run."""
        with self._lock:
            return [alert for run in self._runs.values() for alert in run.slots.values()]

    def runs(self) -> int:
        """How many runs the engine holds state for."""
        with self._lock:
            return len(self._runs)

    # --- internals -------------------------------------------------------------------------

    def _advance(
        self, rule: Rule, run: _Run, obs: Observation, holds: bool, value: float
    ) -> list[Transition]:
        alert = run.slots.get(rule.name)
        out: list[Transition] = []
        if holds:
            if alert is None:
                alert = ActiveAlert(obs.run, rule.name, rule.severity, AlertState.PENDING,
                                    obs.step, obs.time, value)
                out.append(
                    self._transition(rule, obs.run, AlertState.PENDING, obs.step, obs.time, value)
                )
            pending = alert.state is AlertState.PENDING
            held = alert.held + 1 if pending else alert.held
            fires = (pending and held >= rule.for_steps
                     and obs.time - alert.since_time >= rule.for_seconds)
            if fires:
                out.append(
                    self._transition(rule, obs.run, AlertState.FIRING, obs.step, obs.time, value)
                )
            run.slots[rule.name] = replace(
                alert, value=value, held=held, failed=0,
                state=AlertState.FIRING if fires else alert.state,
                fired_step=obs.step if fires else alert.fired_step,
            )
            return out
        if alert is None:
            return out
        if alert.state is AlertState.PENDING:
            del run.slots[rule.name]
            return [self._transition(rule, obs.run, AlertState.INACTIVE, obs.step, obs.time, value)]
        if alert.failed + 1 > rule.keep_firing_steps:
            del run.slots[rule.name]
            return [self._transition(rule, obs.run, AlertState.RESOLVED, obs.step, obs.time, value)]
        run.slots[rule.name] = replace(alert, failed=alert.failed + 1)
        return out

    def _expire(self, now: float, keep: str | None) -> list[Transition]:
        out: list[Transition] = []
        while self._runs:
            name, run = next(iter(self._runs.items()))
            if now - run.seen <= self._idle or name == keep:
                break
            out += self._forget(name)
        return out

    def _forget(self, name: str) -> list[Transition]:
        run = self._runs.pop(name)
        by_name = {r.name: r for r in self._rules}
        out = []
        for rule_name, alert in run.slots.items():
            state = AlertState.RESOLVED if alert.state is AlertState.FIRING else AlertState.INACTIVE
            t = self._transition(
                by_name[rule_name], name, state, run.last_step, run.last_time, alert.value
            )
            out.append(_annotated(t, "run idle"))
        return out

    @staticmethod
    def _transition(
        rule: Rule, run: str, state: AlertState, step: int, t: float, value: float
    ) -> Transition:
        fields = {
            "run": run,
            "rule": rule.name,
            "step": str(step),
            "value": f"{value:.4g}" if math.isfinite(value) else str(value),
            "severity": rule.severity.value,
        }
        return Transition(
            rule=rule.name,
            run=run,
            severity=rule.severity,
            state=state,
            step=step,
            time=t,
            value=value,
            labels=dict(rule.labels),
            annotations={k: _render(v, fields) for k, v in rule.annotations.items()},
        )


def _annotated(t: Transition, resolved_by: str) -> Transition:
    """`t` with a `resolved_by` annotation saying why the engine ended it."""
    return Transition(t.rule, t.run, t.severity, t.state, t.step, t.time, t.value, t.labels,
                      {**t.annotations, "resolved_by": resolved_by})


def _render(text: str, fields: Mapping[str, str]) -> str:
    """Substitute {run} {rule} {step} {value} {severity}; any other brace text is left alone."""
    return _PLACEHOLDER.sub(lambda m: fields[m.group(1)], text)
