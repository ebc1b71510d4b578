"""What the report draws, independent of how: panels, their lines, scales, phase bands, colours.

Both renderers (`_png` with matplotlib, `_html` with hand-made SVG) draw the same panels from here,
so the image and the page cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

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
THRESHOLD_COLOR: Final = "#222222"
LOG_SPAN: Final = 20.0
"""A series whose positive values span at least this factor is drawn on a log scale."""


@dataclass(frozen=True, slots=True)
class Line:
    """One series of a panel. `right`: drawn against the panel's right-hand axis."""

    metric: str
    label: str
    color: str
    points: Points
    right: bool = False
    dashed: bool = False

    @property
    def finite(self) -> Points:
        return [(s, v) for s, v in self.points if math.isfinite(v)]

    @property
    def nonfinite(self) -> Points:
        return [(s, v) for s, v in self.points if not math.isfinite(v)]


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
        return [ln for ln in self.lines if ln.right is right]

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


def spans_decades(points: Points) -> bool:
    """True when the positive finite values span at least `LOG_SPAN`."""
    pos = [v for _, v in points if math.isfinite(v) and v > 0]
    return bool(pos) and max(pos) / min(pos) >= LOG_SPAN


def _lines(run: RunData, specs: list[tuple[str, str, str, bool, bool]]
           ) -> tuple[list[Line], list[str]]:  # fmt: skip
    lines, missing = [], []
    for metric, label, color, right, dashed in specs:
        pts = run.series.get(metric)
        if pts:
            lines.append(Line(metric, label, color, pts, right, dashed))
        else:
            missing.append(metric)
    return lines, missing


def _note(missing: list[str]) -> list[str]:
    return [f"not recorded in this run: {', '.join(missing)}"] if missing else []


def panels(run: RunData) -> list[Panel]:
    """The signal panels, top to bottom (the alert panel is drawn from `run.alerts`)."""
    out = []
    lines, miss = _lines(run, [(nm.LOSS, "loss", "#1a1a1a", False, False)])
    out.append(Panel("chart-loss", "Loss", "loss", lines,
                     log=any(spans_decades(ln.points) for ln in lines), notes=_note(miss)))
    lines, miss = _lines(run, [
        (nm.STABILITY_RATIO_TWO_SECANT, "r two-secant (every step)", "#ef6c00", False, False),
        (nm.STABILITY_RATIO, "r = η·λ_grad/2", "#c62828", False, False),
        (nm.STABILITY_RATIO_SECANT, "r secant", "#6a1b9a", False, True),
        (nm.STABILITY_RATIO_MAX, "r = η·λ_max/2", "#00838f", False, False),
    ])  # fmt: skip
    all_pts = [p for ln in lines for p in ln.points]
    out.append(Panel("chart-stability", "Stability ratio (≥ 1: beyond the edge)",
                     "stability ratio", lines, log=spans_decades(all_pts), threshold=1.0,
                     notes=_note(miss)))  # fmt: skip
    lines, miss = _lines(run, [
        (nm.RHO, "ρ = ‖g‖/‖√v̂‖", "#1565c0", False, False),
        (nm.RHO_SAMPLED, "ρ sampled (every step)", "#0097a7", False, True),
        (nm.SQRT_V_DECAY, "√v̂ decay (right; 1 = pure β2 decay)", "#2e7d32", True, False),
    ])  # fmt: skip
    out.append(Panel("chart-rho", "Preconditioner decay", "ρ", lines,
                     log=any(ln.metric in (nm.RHO, nm.RHO_SAMPLED)
                             and any(v > 0 for _, v in ln.finite)
                             for ln in lines),
                     right_label="√v̂ decay", right_robust=True, notes=_note(miss)))  # fmt: skip
    lines, miss = _lines(run, [
        (nm.SA_SIGN_DIVERSITY, "sign diversity 1 − |p₊ − p₋|", "#ad1457", False, False),
        (nm.GRAD_SPIKE_SHARE, "gradient spike share", "#ef6c00", False, True),
    ])  # fmt: skip
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
