"""Response models of the HTTP API. Every float field is a `JsonFloat` (explicit NaN/Inf)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from spikewatch.server.api._json import JsonFloat, JsonObject


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class RunOut(_Out):
    """A training run."""

    name: str
    created_at: JsonFloat = Field(description="Unix time of the first hello or batch.")
    last_seen: JsonFloat = Field(description="Unix time the run last sent data.")
    last_step: int | None = Field(description="Last step received; null before the first batch.")
    world_size: int
    meta: JsonObject = Field(description="The run's hello metadata (model, optimizer, ...).")
    active: bool
    firing_alerts: int = Field(description="Alerts of this run currently firing.")
    page_url: str | None = Field(None, description="Path of the run's HTML page on this server.")


class MetricOut(_Out):
    """A metric recorded for a run, with its catalogue entry when it has one."""

    name: str
    unit: str | None = None
    description: str | None = None
    exported: bool = Field(False, description="Exported to Prometheus as spikewatch_run_<name>.")
    latest: JsonFloat | None = Field(None, description="The run's latest global value of a "
                                     "step scalar (None for per-layer and histogram metrics).")


class PointOut(_Out):
    step: int
    time: JsonFloat
    value: JsonFloat


class SeriesOut(_Out):
    """One series of a run: a metric, optionally one layer and/or one rank."""

    run: str
    metric: str
    layer: str | None
    rank: int | None
    points: list[PointOut]
    truncated: bool = Field(description="True when `limit` points came back (maybe more).")


class HistogramOut(_Out):
    """Fixed-width bins over [lo, hi]; `nonfinite` counts NaN/Inf samples."""

    step: int
    time: JsonFloat
    layer: str
    lo: JsonFloat
    hi: JsonFloat
    counts: list[int]
    nonfinite: int


class EventOut(_Out):
    step: int
    time: JsonFloat
    type: str
    rank: int
    data: JsonObject


class AlertOut(_Out):
    """One alert episode of a rule on a run."""

    run: str
    rule: str
    severity: str
    state: str = Field(description="pending, firing, resolved or inactive.")
    first_step: int = Field(description="Step at which the condition first held.")
    fired_step: int | None
    resolved_step: int | None
    value: JsonFloat = Field(description="Metric value that decided the last transition.")
    started_at: JsonFloat
    fired_at: JsonFloat | None
    resolved_at: JsonFloat | None
    labels: dict[str, str]
    annotations: dict[str, str]


class RuleOut(_Out):
    """A loaded alert rule; `definition` is its full declarative form."""

    name: str
    severity: str
    description: str
    definition: JsonObject


class HealthOut(_Out):
    status: str


class ReadyOut(_Out):
    """Readiness: each check is "ok" or the reason it failed."""

    status: str
    checks: dict[str, str]


class ErrorOut(_Out):
    detail: Any
