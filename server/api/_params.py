"""Validated path and query parameters shared by the routes (bad values are a 422)."""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import HTTPException, Path, Query

from spikewatch.protocol.wire import LAYER_RE, METRIC_RE, RUN_RE

MAX_STEP: Final = 2**62
MAX_SERIES_LIMIT: Final = 10000
MAX_HIST_LIMIT: Final = 1000
MAX_EVENT_LIMIT: Final = 1000

RunName = Annotated[str, Path(pattern=RUN_RE.pattern, max_length=128,
                              description="Run name as the agent reported it.")]
MetricName = Annotated[str, Query(pattern=METRIC_RE.pattern, max_length=64)]
LayerName = Annotated[str | None, Query(pattern=LAYER_RE.pattern, max_length=128,
                                        description="One layer instead of the global series.")]
Rank = Annotated[int | None, Query(ge=-1, le=1 << 20,
                                   description="One rank; -1 is the combined global value.")]
StepMin = Annotated[int | None, Query(ge=0, le=MAX_STEP)]
StepMax = Annotated[int | None, Query(ge=0, le=MAX_STEP)]
EventType = Annotated[str | None, Query(pattern=METRIC_RE.pattern, max_length=64)]


def check_range(step_min: int | None, step_max: int | None) -> None:
    """422 when the step range is empty by construction."""
    if step_min is not None and step_max is not None and step_min > step_max:
        raise HTTPException(422, [{"loc": ["query", "step_min"], "type": "value_error",
                                   "msg": "step_min must be ≤ step_max"}])
