"""The server's shared vocabulary: what flows between store, rule engine and notifiers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    PAGE = "page"


class AlertState(StrEnum):
    """Alert lifecycle: pending (condition true, not yet sustained) → firing → resolved."""

    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"
    INACTIVE = "inactive"  # pending that cleared before firing


@dataclass(frozen=True, slots=True)
class Observation:
    """Global values of one run at one step, as the store committed them (input of the rules).

    `time` is the step's own clock (Unix seconds when the agent recorded it), so a rule's
    `for_seconds` means the same on replay as live."""

    run: str
    step: int
    time: float
    values: Mapping[str, float]
    events: tuple[str, ...] = ()  # event types seen at this step (e.g. "nonfinite")


@dataclass(frozen=True, slots=True)
class Transition:
    """An alert changed state. The store persists it; the notifiers push it."""

    rule: str
    run: str
    severity: Severity
    state: AlertState  # the new state
    step: int
    time: float
    value: float  # the metric value that decided the transition
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
