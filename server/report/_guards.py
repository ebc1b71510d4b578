"""The guard's actions as spans on the step axis, from its stored `guard_action`/`guard_release`
events (see docs/guard.md).

A `guard_action` event says from which step the guard acts (`from_step`; the event's own step is
the reading that decided it, one step earlier); the `guard_release` that follows says at which
step it let go (`released_at_step`). An action with no release yet is still acting. A `"v"`
action that lifts v again while it holds streams another `guard_action` naming the action it
belongs to (`started_at_step`, `lift` ≥ 2): part of that span, not a span of its own. With several
ranks each rank streams the same events: one span per start step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from spikewatch.protocol.names import EventType

GUARD_EVENTS: Final = (EventType.GUARD_ACTION.value, EventType.GUARD_RELEASE.value)
"""The event types a guard span is made of."""


@dataclass(frozen=True, slots=True)
class GuardSpan:
    """One guard action: the first step it acted on, the step it let go (None: still acting),
    the action ("v", "lr") and why it acted."""

    start: int
    end: int | None
    action: str
    why: str


def _int(x: Any, default: int) -> int:
    return x if isinstance(x, int) and not isinstance(x, bool) else default


def guard_spans(events: Iterable[tuple[int, str, Mapping[str, Any]]]) -> list[GuardSpan]:
    """(step, type, data) of guard events, in step order → the guard's actions, by start step.

    A release closes the open action it names (`started_at_step`), else the latest open one; a
    release with no open action is ignored."""
    spans: dict[int, GuardSpan] = {}
    open_starts: list[int] = []
    for step, kind, data in events:
        if kind == EventType.GUARD_ACTION.value:
            if _int(data.get("started_at_step"), -1) in open_starts:
                continue  # a renewed lift within an open action
            start = _int(data.get("from_step"), step + 1)
            if start not in spans:
                spans[start] = GuardSpan(start, None, str(data.get("action", "")),
                                         str(data.get("why", "")))
                open_starts.append(start)
        elif kind == EventType.GUARD_RELEASE.value and open_starts:
            named = _int(data.get("started_at_step"), -1)
            start = named if named in open_starts else open_starts[-1]
            open_starts.remove(start)
            s = spans[start]
            spans[start] = GuardSpan(s.start, max(_int(data.get("released_at_step"), step), start),
                                     s.action, s.why)
    return sorted(spans.values(), key=lambda s: s.start)


def in_window(spans: Iterable[GuardSpan], lo: int, hi: int) -> list[GuardSpan]:
    """The spans that overlap steps [lo, hi]."""
    return [s for s in spans if s.start <= hi and (s.end is None or s.end >= lo)]


def merge_spans(spans: list[GuardSpan], last: int, min_gap: float
                ) -> list[tuple[int, int, list[GuardSpan]]]:  # fmt: skip
    """(first step, last step, spans) of the `spans` (in start order) merged where less than
    `min_gap` steps (a pixel column) apart, an open span ending at `last`: a chart draws at most
    one mark per column however often the guard acted."""
    out: list[tuple[int, int, list[GuardSpan]]] = []
    for s in spans:
        end = s.end if s.end is not None else max(last, s.start)
        if out and s.start - out[-1][1] < min_gap:
            a, b, group = out[-1]
            out[-1] = (a, max(b, end), [*group, s])
        else:
            out.append((s.start, end, [s]))
    return out
