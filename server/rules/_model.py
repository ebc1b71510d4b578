"""An alert rule and a rule file, as pydantic models (the YAML form; nothing is `eval`ed).

    extra_metrics: [my_metric]     # optional: custom names besides protocol.names.CATALOGUE
    rules:
      - name: predicted_loss_spike
        severity: page             # info | warning | page
        condition: {...}           # see _condition_model
        for_steps: 8               # sustained for N consecutive observations (default 1)
        for_seconds: 0             # and for T seconds of step time (default 0)
        keep_firing_steps: 0       # stay firing N observations after the condition clears
        stale_steps: 50            # default carry-over of a missing metric for the leaves
        labels: {team: ml}
        annotations: {summary: ..., description: ..., runbook: ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final

from pydantic import AfterValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from spikewatch.server.rules._condition_model import (
    DEFAULT_STALE_STEPS,
    MAX_DEPTH,
    NAME_PATTERN,
    Condition,
    MetricCondition,
    Rate,
    StaleSteps,
    Strict,
    depth,
    inherit_stale,
    leaves,
)
from spikewatch.server.types import Severity

RESERVED_LABELS: Final = frozenset({"alertname", "run", "severity"})


def _not_internal(name: str) -> str:
    if name.startswith("__"):
        raise PydanticCustomError("internal_name", "names starting with __ are Prometheus'")
    return name


def _not_reserved(name: str) -> str:
    if name in RESERVED_LABELS:
        raise PydanticCustomError("reserved_label", "reserved label (set by spikewatch)")
    return name


Name = Annotated[str, Field(pattern=NAME_PATTERN)]
AnnotationName = Annotated[Name, AfterValidator(_not_internal)]
LabelName = Annotated[AnnotationName, AfterValidator(_not_reserved)]


class Rule(Strict):
    """One alert rule: when `condition` holds sustained, the alert fires at `severity`."""

    name: Name
    severity: Severity = Field(strict=False)
    condition: Condition
    for_steps: int = Field(1, ge=1, le=1_000_000)
    for_seconds: float = Field(0.0, ge=0, allow_inf_nan=False)
    keep_firing_steps: int = Field(0, ge=0, le=1_000_000)
    stale_steps: StaleSteps = DEFAULT_STALE_STEPS
    labels: dict[LabelName, str] = Field(default_factory=dict)
    annotations: dict[AnnotationName, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _leaves_inherit_stale_steps(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "condition" in data:
            stale = data.get("stale_steps", DEFAULT_STALE_STEPS)
            return {**data, "condition": inherit_stale(data["condition"], stale)}
        return data

    @field_validator("condition")
    @classmethod
    def _not_too_deep(cls, condition: Condition) -> Condition:
        if depth(condition) > MAX_DEPTH:
            raise PydanticCustomError("too_deep", "all/any nested deeper than {max}",
                                      {"max": MAX_DEPTH})
        return condition

    @property
    def description(self) -> str:
        """The description annotation, else the summary."""
        return self.annotations.get("description") or self.annotations.get("summary", "")

    def metrics(self) -> frozenset[str]:
        """Every metric the condition reads."""
        return frozenset(c.metric for c in leaves(self.condition) if isinstance(c, MetricCondition))

    def windows(self) -> dict[str, int]:
        """The longest `rate` window per metric (how much history the engine keeps)."""
        out: dict[str, int] = {}
        for c in leaves(self.condition):
            if isinstance(c, Rate):
                out[c.metric] = max(out.get(c.metric, 0), c.window_steps)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The rule in its YAML form (loading it back gives an equal rule)."""
        return self.model_dump(mode="json", by_alias=True)


class RuleFile(Strict):
    """A rule file: its rules (uniquely named) and the custom metric names they may read."""

    extra_metrics: list[Name] = Field(default_factory=list)
    rules: list[Rule] = Field(min_length=1, max_length=1000)
