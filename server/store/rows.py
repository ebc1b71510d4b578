"""Row types the store returns to readers (API, exporter, CLI, report, backtest) and to the ingest
path.

Times are Unix epoch seconds (float). Values are floats and may be NaN or ±Inf: the store keeps
non-finite values explicitly, so a blow-up reads back as what it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spikewatch.protocol.wire import Event
from spikewatch.server.types import Observation

GLOBAL_RANK = -1
"""Rank under which values combined from all ranks' partial sums are stored."""


@dataclass(frozen=True, slots=True)
class RunRow:
    """A training run: its name, when it was first and last heard from, and its hello metadata."""

    name: str
    created_at: float
    last_seen: float
    last_step: int | None
    world_size: int
    meta: dict[str, Any]
    active: bool


@dataclass(frozen=True, slots=True)
class Point:
    """One value of a series."""

    step: int
    time: float
    value: float


@dataclass(frozen=True, slots=True)
class HistRow:
    """One histogram of a metric at a step (fixed-width bins over [lo, hi])."""

    step: int
    time: float
    layer: str
    lo: float
    hi: float
    counts: list[int]
    nonfinite: int


@dataclass(frozen=True, slots=True)
class EventRow:
    """A discrete event at a step (see spikewatch.protocol.names.EventType)."""

    step: int
    time: float
    type: str
    data: dict[str, Any]
    rank: int = 0


@dataclass(frozen=True, slots=True)
class AlertRow:
    """One alert episode of a rule on a run: pending → firing → resolved (or inactive)."""

    run: str
    rule: str
    severity: str
    state: str
    first_step: int
    fired_step: int | None
    resolved_step: int | None
    value: float
    started_at: float
    fired_at: float | None
    resolved_at: float | None
    labels: dict[str, str]
    annotations: dict[str, str]

    @property
    def summary(self) -> str:
        """The rule's summary annotation ("" when it has none)."""
        return self.annotations.get("summary", "")


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one ingested message did: `duplicate` (already stored, nothing written), the number of
    points written, the observations (global values per step) that became known, and the events
    with their data per step (for rules that filter on event data).

    A step may be observed more than once: rank 0's scalars and the values combined from partial
    sums arrive in different messages when ranks report at different times.
    """

    duplicate: bool
    points: int
    observations: list[Observation] = field(default_factory=list)
    step_events: dict[int, tuple[Event, ...]] = field(default_factory=dict)


def labels_key(labels: Mapping[str, str]) -> str:
    """A stable text key for a label set (alert identity within a run and rule)."""
    return "&".join(f"{k}={labels[k]}" for k in sorted(labels))
