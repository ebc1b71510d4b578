"""Condition evaluation over one run's recent signals.

`Signals` holds, per run, only what the rules read: the last value of each referenced metric (for
the stale carry-over of probes on a cadence) and a bounded window of past values for `rate`.
A metric missing at a step keeps its last value for up to `stale_steps` steps; older than that it is
absent and the leaf evaluates to its `absent_is`. A `rate` window covers the steps
[step − window_steps, step − 1] (the current step excluded) and ignores non-finite values.
Observations arriving late (a step not after the current one) feed the carried values and windows
but are not evaluated themselves; see `Signals.begin`.
"""

from __future__ import annotations

import math
import operator
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from spikewatch.protocol.names import EventType
from spikewatch.protocol.wire import Scalar
from spikewatch.server.rules._condition_model import (
    AllOf,
    AnyOf,
    Condition,
    EventSeen,
    NonFinite,
    Op,
    Rate,
    RateMode,
    Threshold,
)
from spikewatch.server.types import Observation

LATE_STEPS = 100  # how far back an observation still counts as late data rather than a restart
RESUMED = EventType.RESUMED.value
_CMP: dict[Op, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
NAN = math.nan


class EventLike(Protocol):
    """An event with its data (spikewatch.protocol.wire.Event, the store's event rows)."""

    @property
    def type(self) -> str: ...

    @property
    def data(self) -> Mapping[str, Scalar]: ...


class Signals:
    """One run's signals as the rules see them at the current observation."""

    def __init__(
        self, metrics: Iterable[str], windows: Mapping[str, int], late_steps: int = LATE_STEPS
    ) -> None:
        self._metrics = frozenset(metrics)
        self._windows = dict(windows)
        self._late_steps = late_steps
        self._last: dict[str, tuple[int, float]] = {}
        self._hist: dict[str, deque[tuple[int, float]]] = {
            m: deque(maxlen=n) for m, n in self._windows.items()
        }
        self._obs: Observation | None = None
        self._types: frozenset[str] = frozenset()
        self._events: tuple[EventLike, ...] = ()
        self._late_types: set[str] = set()
        self._late_events: list[EventLike] = []

    @property
    def step(self) -> int:
        assert self._obs is not None
        return self._obs.step

    def begin(self, obs: Observation, events: Iterable[EventLike]) -> bool:
        """Make `obs` the current observation; False if it is late data not to evaluate.

        A step at or below the current one, less than `late_steps` back and without a `resumed`
        event, is late data (e.g. a sharded metric combined once the last rank reported): its
        values join the carried values and windows, its events join the next observation's. A
        step further back, or a `resumed` event, is a restart: carried values and windows reset.
        """
        evs = tuple(events)
        prev = self._obs
        resumed = RESUMED in obs.events or any(e.type == RESUMED for e in evs)
        if prev is not None and obs.step <= prev.step:
            if not resumed and obs.step > prev.step - self._late_steps:
                self._merge_late(obs)
                self._late_types.update(obs.events)
                self._late_events.extend(evs)
                return False
            self._last.clear()
            for h in self._hist.values():
                h.clear()
        self._obs = obs
        self._types = frozenset(obs.events) | self._late_types
        self._events = (*self._late_events, *evs)
        self._late_types = set()
        self._late_events = []
        return True

    def _merge_late(self, obs: Observation) -> None:
        for m in self._metrics:
            v = obs.values.get(m)
            if v is None:
                continue
            last = self._last.get(m)
            if last is None or last[0] <= obs.step:
                self._last[m] = (obs.step, float(v))
            h = self._hist.get(m)
            if h is not None:
                merged = sorted([*h, (obs.step, float(v))], key=lambda p: p[0])
                h.clear()
                h.extend(merged)  # maxlen keeps the newest

    def commit(self) -> None:
        """Fold the current observation into the carried values and windows."""
        obs = self._obs
        assert obs is not None
        for m in self._metrics:
            v = obs.values.get(m)
            if v is None:
                continue
            self._last[m] = (obs.step, float(v))
            h = self._hist.get(m)
            if h is not None:
                h.append((obs.step, float(v)))
                lo = obs.step - self._windows[m]
                while h and h[0][0] < lo:
                    h.popleft()

    def value(self, metric: str, stale_steps: int) -> float | None:
        """The metric now, or its last value if at most `stale_steps` old; None when absent."""
        obs = self._obs
        assert obs is not None
        v = obs.values.get(metric)
        if v is not None:
            return float(v)
        last = self._last.get(metric)
        if last is not None and obs.step - last[0] <= stale_steps:
            return last[1]
        return None

    def window(self, metric: str, steps: int) -> list[tuple[int, float]]:
        """Finite past values of the metric at steps [step − steps, step − 1]."""
        lo, hi = self.step - steps, self.step
        return [(s, v) for s, v in self._hist.get(metric, ()) if lo <= s < hi and math.isfinite(v)]

    def event(self, cond: EventSeen) -> bool:
        """Whether an event matching `cond` happened at the current step."""
        obs = self._obs
        assert obs is not None
        if not cond.where:
            return cond.event in self._types or any(e.type == cond.event for e in self._events)
        want = cond.where.items()
        return any(
            e.type == cond.event and all(_equal(e.data.get(k, _MISSING), v) for k, v in want)
            for e in self._events
        )


_MISSING = object()


def _equal(got: object, want: Scalar) -> bool:
    if got is _MISSING:
        return False
    if isinstance(want, bool):
        return (isinstance(got, bool) or got in (0, 1)) and bool(got) == want
    if isinstance(want, int | float):
        return isinstance(got, int | float) and not isinstance(got, bool) and got == want
    return got == want


def evaluate(cond: Condition, sig: Signals) -> tuple[bool, float]:
    """(holds, value): value is the number that decided it (NaN when there is none)."""
    # `type(...) is` rather than isinstance: pydantic models' isinstance goes through ABCMeta,
    # which this hot path (every rule, every observation) would feel
    if type(cond) is Threshold:
        v = sig.value(cond.metric, cond.stale_steps)
        if v is None:
            return cond.absent_is, NAN
        return _CMP[cond.op](v, cond.value), v
    if type(cond) is NonFinite:
        v = sig.value(cond.metric, cond.stale_steps)
        if v is None:
            return cond.absent_is, NAN
        return not math.isfinite(v), v
    if type(cond) is Rate:
        r = _rate(cond, sig)
        if r is None:
            return cond.absent_is, NAN
        return _CMP[cond.op](r, cond.value), r
    if type(cond) is EventSeen:
        seen = sig.event(cond)
        return seen, 1.0 if seen else 0.0
    assert type(cond) is AllOf or type(cond) is AnyOf
    results = [evaluate(c, sig) for c in cond.conditions]
    holds = all(h for h, _ in results) if type(cond) is AllOf else any(h for h, _ in results)
    # the value of the first child that agrees with the outcome (the primary signal when all hold)
    value = next((v for h, v in results if h == holds), results[0][1])
    return holds, value


def _rate(cond: Rate, sig: Signals) -> float | None:
    x = sig.value(cond.metric, cond.stale_steps)
    if x is None:
        return None
    pts = sig.window(cond.metric, cond.window_steps)
    if len(pts) < cond.min_points or not pts:
        return None
    if cond.mode is RateMode.PER_STEP:
        s0, v0 = pts[0]
        return (x - v0) / (sig.step - s0)
    vals = [v for _, v in pts]
    ref = (
        min(vals)
        if cond.mode is RateMode.RATIO_TO_MIN
        else max(vals)
        if cond.mode is RateMode.RATIO_TO_MAX
        else math.fsum(vals) / len(vals)
    )
    if ref <= 0:
        return None  # a ratio to a non-positive reference means nothing
    return x / ref
