"""Routes under /api/v1/runs: runs, their metrics, series, histograms, events and alerts."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from spikewatch.protocol.names import BY_NAME
from spikewatch.server.api._convert import alert_out, run_out
from spikewatch.server.api._deps import Ctx, get_run_or_404, require_read
from spikewatch.server.api._params import (
    MAX_EVENT_LIMIT,
    MAX_HIST_LIMIT,
    MAX_SERIES_LIMIT,
    EventType,
    LayerName,
    MetricName,
    Rank,
    RunName,
    StepMax,
    StepMin,
    check_range,
)
from spikewatch.server.api._schemas import (
    AlertOut,
    ErrorOut,
    EventOut,
    HistogramOut,
    MetricOut,
    PointOut,
    RunOut,
    SeriesOut,
)
from spikewatch.server.types import AlertState

_404: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Unknown run (or metric)."}}
router = APIRouter(prefix="/runs", tags=["runs"], dependencies=[require_read])


@router.get("", response_model=list[RunOut])
def list_runs(ctx: Ctx) -> list[RunOut]:
    """All runs, most recently seen first, with their number of firing alerts."""
    firing = Counter(a.run for a in ctx.store.alerts(state=AlertState.FIRING.value))
    rows = sorted(ctx.store.list_runs(), key=lambda r: (-r.last_seen, r.name))
    return [run_out(r, firing[r.name]) for r in rows]


@router.get("/{run}", response_model=RunOut, responses=_404)
def get_run(ctx: Ctx, run: RunName) -> RunOut:
    """One run."""
    row = get_run_or_404(ctx, run)
    firing = ctx.store.alerts(run, state=AlertState.FIRING.value)
    return run_out(row, len(firing))


@router.get("/{run}/metrics", response_model=list[MetricOut], responses=_404)
def list_metrics(ctx: Ctx, run: RunName) -> list[MetricOut]:
    """Metrics recorded for a run, with unit and description from the catalogue and the
    latest value of each step scalar."""
    get_run_or_404(ctx, run)
    latest = ctx.store.latest(run)
    out = []
    for name in sorted(ctx.store.metrics(run)):
        m = BY_NAME.get(name)
        out.append(MetricOut(name=name, unit=m.unit if m else None,
                             description=m.description if m else None,
                             exported=bool(m and m.export), latest=latest.get(name)))
    return out


@router.get("/{run}/series", response_model=SeriesOut, responses=_404)
def get_series(
    ctx: Ctx, run: RunName, metric: MetricName, layer: LayerName = None, rank: Rank = None,
    step_min: StepMin = None, step_max: StepMax = None,
    limit: Annotated[int, Query(ge=1, le=MAX_SERIES_LIMIT)] = 1000,
) -> SeriesOut:
    """A metric's values by step: the global series, or one layer's, or one rank's."""
    check_range(step_min, step_max)
    get_run_or_404(ctx, run)
    pts = ctx.store.series(run, metric, layer=layer, rank=rank, step_min=step_min,
                           step_max=step_max, limit=limit)
    if not pts and metric not in ctx.store.metrics(run):
        raise HTTPException(404, f"run {run!r} has no metric {metric!r}")
    return SeriesOut(run=run, metric=metric, layer=layer, rank=rank,
                     points=[PointOut(step=p.step, time=p.time, value=p.value) for p in pts],
                     truncated=len(pts) >= limit)


@router.get("/{run}/histograms", response_model=list[HistogramOut], responses=_404)
def get_histograms(
    ctx: Ctx, run: RunName, metric: MetricName, layer: LayerName = None,
    step_min: StepMin = None, step_max: StepMax = None,
    limit: Annotated[int, Query(ge=1, le=MAX_HIST_LIMIT)] = 100,
) -> list[HistogramOut]:
    """Histograms of a metric (e.g. sa_hist) by step and layer."""
    check_range(step_min, step_max)
    get_run_or_404(ctx, run)
    rows = ctx.store.histograms(run, metric, layer=layer, step_min=step_min, step_max=step_max,
                                limit=limit)
    return [HistogramOut(step=h.step, time=h.time, layer=h.layer, lo=h.lo, hi=h.hi,
                         counts=list(h.counts), nonfinite=h.nonfinite) for h in rows]


@router.get("/{run}/events", response_model=list[EventOut], responses=_404)
def get_events(
    ctx: Ctx, run: RunName, type: EventType = None,
    step_min: StepMin = None, step_max: StepMax = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENT_LIMIT)] = 100,
) -> list[EventOut]:
    """Discrete events (hparam changes, momentum jumps, non-finite values, ...) by step."""
    check_range(step_min, step_max)
    get_run_or_404(ctx, run)
    rows = ctx.store.events(run, type=type, step_min=step_min, step_max=step_max, limit=limit)
    return [EventOut(step=e.step, time=e.time, type=e.type, rank=e.rank, data=e.data)
            for e in rows]


@router.get("/{run}/alerts", response_model=list[AlertOut], responses=_404)
def get_run_alerts(
    ctx: Ctx, run: RunName, state: Annotated[AlertState | None, Query()] = None,
) -> list[AlertOut]:
    """Alert episodes of a run: rule, severity, state, first/fired/resolved step and value."""
    get_run_or_404(ctx, run)
    return [alert_out(a) for a in ctx.store.alerts(run, state=state.value if state else None)]
