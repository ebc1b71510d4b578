"""What the report draws, independent of how: panels, their lines, scales, phase bands, colours.

`_draw` turns these into matplotlib axes for both the PNG and the page's SVG charts, so the image
and the page cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from spikewatch.protocol import names as nm
from spikewatch.server.report._data import Points, RunData

PHASES: Final[dict[int, tuple[str, str]]] = {
    1: ("1 stable", "#e2f0d9"),
    2: ("2 v decay", "#fff2b3"),
    3: ("3 onset", "#f9c0b0"),
    4: ("4 v growth", "#ddd3ee"),
    5: ("5 recovery", "#cfe3f5"),
}
"""Phase value → (legend label, background colour)."""

SEVERITY_COLORS: Final[dict[str, str]] = {"page": "#c62828", "warning": "#ef8a00",
                                          "info": "#1f6fb4"}  # fmt: skip
OTHER_SEVERITY: Final = "#777777"
ONSET_COLOR: Final = "#8b0000"
GUARD_COLOR: Final = "#00897b"
"""The guard's actions: a band of this colour on the loss chart, from its start to its release."""
THRESHOLD_COLOR: Final = "#222222"
ALERTS_ID: Final = "chart-alerts"
"""Id of the alert chart (the signal panels' ids are in `panels`)."""
LOG_SPAN: Final = 20.0
"""A series whose positive values span at least this factor is drawn on a log scale."""


class Style(NamedTuple):
    """How a metric is drawn: legend label, colour, dashed or not, against the right-hand axis."""

    label: str
    color: str
    dashed: bool = False
    right: bool = False


STYLES: Final[dict[str, Style]] = {
    nm.LOSS: Style("loss", "#1a1a1a"),
    nm.STABILITY_RATIO_TWO_SECANT: Style("r two-secant (every step)", "#ef6c00"),
    nm.STABILITY_RATIO: Style("r = η·λ_grad/2", "#c62828"),
    nm.STABILITY_RATIO_SECANT: Style("r secant", "#6a1b9a", dashed=True),
    nm.STABILITY_RATIO_MAX: Style("r = η·λ_max/2", "#00838f"),
    nm.RHO: Style("ρ = ‖g‖/‖√v̂‖", "#1565c0"),
    nm.RHO_SAMPLED: Style("ρ sampled (every step)", "#0097a7", dashed=True),
    nm.SQRT_V_DECAY: Style("√v̂ decay (right; 1 = pure β2 decay)", "#2e7d32", right=True),
    nm.SA_SIGN_DIVERSITY: Style("sign diversity 1 − |p₊ − p₋|", "#ad1457"),
    nm.GRAD_SPIKE_SHARE: Style("gradient spike share", "#ef6c00", dashed=True),
}
"""Metric → how its line looks, in every panel and both formats."""


@dataclass(frozen=True, slots=True)
class Line:
    """One series of a panel, drawn in its metric's `STYLES` entry."""

    metric: str
    points: Points

    @property
    def style(self) -> Style:
        return STYLES[self.metric]

    @property
    def finite(self) -> Points:
        return [(s, v) for s, v in self.points if math.isfinite(v)]


@dataclass(frozen=True, slots=True)
class Panel:
    """One chart sharing the step axis. `log`/`right_log`: log scale of the left/right axis;
    `right_robust`: the right axis spans the 2nd–98th percentile (outliers become edge marks)."""

    id: str
    title: str
    ylabel: str
    lines: list[Line]
    log: bool = False
    right_label: str = ""
    right_log: bool = False
    right_robust: bool = False
    threshold: float | None = None
    ylim: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)

    def axis_lines(self, right: bool) -> list[Line]:
        return [ln for ln in self.lines if ln.style.right is right]

    def limits(self, right: bool) -> tuple[float, float]:
        """(low, high) of the left or right axis in data units."""
        if right:
            return limits(self.axis_lines(True), self.right_log, robust=self.right_robust)
        extra = [self.threshold] if self.threshold is not None else []
        return limits(self.axis_lines(False), self.log, extra=extra, ylim=self.ylim)


PAD: Final = 0.06
"""Fraction of the value range added above and below."""


def limits(lines: list[Line], log: bool, *, extra: list[float] | None = None,
           ylim: tuple[float, float] | None = None, robust: bool = False
           ) -> tuple[float, float]:  # fmt: skip
    """Axis limits fitting the drawable values of `lines` (and `extra`), padded by `PAD`."""
    if ylim is not None:
        return ylim
    vals = sorted(v for ln in lines for _, v in ln.finite if v > 0 or not log)
    if robust and len(vals) >= 20:
        vals = [vals[int(0.02 * (len(vals) - 1))], vals[int(0.98 * (len(vals) - 1))]]
    vals += [x for x in extra or [] if x > 0 or not log]
    t = [math.log10(v) for v in vals] if log else vals
    lo, hi = (min(t), max(t)) if t else (0.0, 1.0)
    if hi - lo < 1e-12:
        half = 0.5 if log else max(abs(lo) * 0.1, 0.5)
        lo, hi = lo - half, hi + half
    pad = (hi - lo) * PAD
    lo, hi = lo - pad, hi + pad
    return (10.0**lo, 10.0**hi) if log else (lo, hi)


def edge(v: float, lo: float, hi: float, log: bool) -> str | None:
    """Where a value that cannot be drawn goes: "top" (NaN, +Inf, above the axis), "bottom"
    (−Inf, below the axis, ≤ 0 on a log axis), or None when it is drawn normally."""
    if math.isnan(v) or v > hi:
        return "top"
    if v < lo or (log and v <= 0):
        return "bottom"
    return None


def value_text(v: float, digits: int = 4) -> str:
    """A value for tooltips and tables: NaN, +Inf and −Inf spelled out, else `digits` figures."""
    if not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "−Inf")
    return f"{v:.{digits}g}"


def spans_decades(points: Points) -> bool:
    """True when the positive finite values span at least `LOG_SPAN`."""
    pos = [v for _, v in points if math.isfinite(v) and v > 0]
    return bool(pos) and max(pos) / min(pos) >= LOG_SPAN


def thin(points: Points, column: Callable[[int], float]) -> Points:
    """First, min, max and last point of each pixel column (`column(step)`), in step order: a
    long series costs at most four points a column, and a one-step spike survives."""
    cols: dict[int, Points] = {}
    for p in points:
        cols.setdefault(int(column(p[0])), []).append(p)
    out: Points = []
    for col in cols.values():
        keep = {col[0], col[-1], min(col, key=lambda p: p[1]), max(col, key=lambda p: p[1])}
        out += sorted(keep)
    return out


def split(line: Line, lo: float, hi: float, log: bool) -> tuple[list[Points], dict[str, Points]]:
    """`line` on an axis over [lo, hi]: the stretches drawn as connected lines, broken at each
    value that `edge` sends to the panel's edge instead, and those values by edge."""
    runs: list[Points] = [[]]
    off: dict[str, Points] = {"top": [], "bottom": []}
    for s, v in line.points:
        where = edge(v, lo, hi, log)
        if where is None:
            runs[-1].append((s, v))
            continue
        off[where].append((s, v))
        if runs[-1]:
            runs.append([])
    return [r for r in runs if r], off


def _lines(run: RunData, metrics: list[str]) -> tuple[list[Line], list[str]]:
    """The lines of the `metrics` the run has, and those it lacks."""
    lines = [Line(m, run.series[m]) for m in metrics if run.series.get(m)]
    return lines, [m for m in metrics if not run.series.get(m)]


def _note(missing: list[str]) -> list[str]:
    return [f"not recorded in this run: {', '.join(missing)}"] if missing else []


def panels(run: RunData) -> list[Panel]:
    """The signal panels, top to bottom (the alert panel is drawn from `run.alerts`)."""
    out = []
    lines, miss = _lines(run, [nm.LOSS])
    out.append(Panel("chart-loss", "Loss", "loss", lines,
                     log=any(spans_decades(ln.points) for ln in lines), notes=_note(miss)))
    lines, miss = _lines(run, [nm.STABILITY_RATIO_TWO_SECANT, nm.STABILITY_RATIO,
                               nm.STABILITY_RATIO_SECANT, nm.STABILITY_RATIO_MAX])  # fmt: skip
    all_pts = [p for ln in lines for p in ln.points]
    out.append(Panel("chart-stability", "Stability ratio (≥ 1: beyond the edge)",
                     "stability ratio", lines, log=spans_decades(all_pts), threshold=1.0,
                     notes=_note(miss)))  # fmt: skip
    lines, miss = _lines(run, [nm.RHO, nm.RHO_SAMPLED, nm.SQRT_V_DECAY])
    out.append(Panel("chart-rho", "Preconditioner decay", "ρ", lines,
                     log=any(not ln.style.right and any(v > 0 for _, v in ln.finite)
                             for ln in lines),
                     right_label="√v̂ decay", right_robust=True, notes=_note(miss)))  # fmt: skip
    lines, miss = _lines(run, [nm.SA_SIGN_DIVERSITY, nm.GRAD_SPIKE_SHARE])
    out.append(Panel("chart-alignment", "Alignment and gradient spectrum", "share",
                     lines, ylim=(0.0, 1.05), notes=_note(miss)))
    return out


def phase_bands(run: RunData) -> list[tuple[int, int, int]]:
    """(start step, end step, phase) for each stretch of one phase; [] without a phase series.

    A stretch lasts from its first labelled step to the next label's step (the last one to the
    run's last step). Values other than 1..5 (or non-finite) end a stretch and are not shaded.
    """
    pts = run.series.get(nm.PHASE, [])
    last = run.step_range[1]
    bands: list[tuple[int, int, int]] = []
    cur: int | None = None
    start = 0
    for step, v in pts:
        ph = int(v) if math.isfinite(v) and float(v).is_integer() and int(v) in PHASES else None
        if ph != cur:
            if cur is not None:
                bands.append((start, step, cur))
            cur, start = ph, step
    if cur is not None:
        bands.append((start, max(last, start + 1), cur))
    return bands


def coarse_bands(bands: list[tuple[int, int, int]], lo: int, hi: int, columns: int
                 ) -> list[tuple[int, int, int]]:  # fmt: skip
    """`bands` at a resolution of `columns` pixel columns over [lo, hi]: each column takes the
    phase at its centre, and runs of equal columns merge (so a flickering label costs at most
    `columns` shapes, not one per step)."""
    if len(bands) <= columns or hi <= lo:
        return bands
    out: list[tuple[int, int, int]] = []
    k = 0
    width = (hi - lo) / columns
    for c in range(columns):
        mid = lo + (c + 0.5) * width
        while k < len(bands) and bands[k][1] <= mid:
            k += 1
        if k == len(bands):
            break
        if bands[k][0] > mid:
            continue  # an unshaded gap
        start, end = round(lo + c * width), round(lo + (c + 1) * width)
        ph = bands[k][2]
        if out and out[-1][2] == ph and out[-1][1] == start:
            out[-1] = (out[-1][0], end, ph)
        else:
            out.append((start, end, ph))
    return out


def severity_color(severity: str) -> str:
    return SEVERITY_COLORS.get(severity, OTHER_SEVERITY)


def alert_rules(run: RunData) -> list[str]:
    """Rule names in the order they first raised an alert (one row each in the alert panel)."""
    seen: dict[str, None] = {}
    for a in sorted(run.alerts, key=lambda a: a.first_step):
        seen.setdefault(a.rule, None)
    return list(seen)


@dataclass(frozen=True, slots=True)
class Layout:
    """What both formats draw of one run, worked out once: its panels (top to bottom), phase
    bands and the rules of the alert rows."""

    run: RunData
    panels: list[Panel]
    bands: list[tuple[int, int, int]]
    rules: list[str]


def layout(run: RunData) -> Layout:
    return Layout(run, panels(run), phase_bands(run), alert_rules(run))
