"""Inline SVG charts drawn from the data (no library, no network), one per panel.

Every chart is an ``<svg>`` with an ``id`` and a ``data-points`` attribute: the number of points it
drew (line vertices plus edge markers for non-finite values). Long series are thinned per pixel
column to their first/min/max/last values, so spikes survive; non-finite values are never thinned
away: each pixel column that holds one gets a marker at the panel's edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

from spikewatch.server.report._data import Points, RunData
from spikewatch.server.report._layout import (
    ONSET_COLOR,
    PHASES,
    THRESHOLD_COLOR,
    Line,
    Panel,
    alert_rules,
    coarse_bands,
    edge,
    phase_bands,
    severity_color,
)

WIDTH: Final = 1200
HEIGHT: Final = 240
LEFT: Final = 70
RIGHT: Final = 70
TOP: Final = 30
BOTTOM: Final = 26
ROW: Final = 30
"""Height of one rule's row in the alert chart."""
FONT: Final = "font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif"


def _fmt(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _num(v: float) -> str:
    if not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "−Inf")
    return f"{v:.4g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round numbers covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 12) for i in range(int((hi - start) / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Decades in [10^lo, 10^hi] (with 2 and 5 when fewer than three decades fit)."""
    out = []
    for k in range(math.floor(lo), math.ceil(hi) + 1):
        mults = (1,) if hi - lo >= 2 else (1, 2, 5)
        out += [m * 10.0**k for m in mults if lo - 1e-9 <= math.log10(m * 10.0**k) <= hi + 1e-9]
    return out


@dataclass(frozen=True, slots=True)
class Axis:
    """A y axis over data limits [lo, hi]: value → pixel, linear or log10."""

    lo: float
    hi: float
    log: bool
    top: float
    bottom: float

    def _t(self, v: float) -> float:
        return math.log10(v) if self.log else v

    def __call__(self, v: float) -> float:
        lo, hi = self._t(self.lo), self._t(self.hi)
        return self.bottom - (self._t(v) - lo) / (hi - lo) * (self.bottom - self.top)

    def edge(self, v: float) -> str | None:
        """"top"/"bottom" for a value drawn as an edge marker, None for one on the scale."""
        return edge(v, self.lo, self.hi, self.log)

    def ticks(self) -> list[float]:
        if self.log:
            return log_ticks(self._t(self.lo), self._t(self.hi))
        return nice_ticks(self.lo, self.hi)


def thin(points: Points, x: Callable[[int], float]) -> Points:
    """First, min, max and last point of each pixel column, in step order."""
    cols: dict[int, list[tuple[int, float]]] = {}
    for p in points:
        cols.setdefault(int(x(p[0])), []).append(p)
    out: Points = []
    for col in cols.values():
        keep = {col[0], col[-1], min(col, key=lambda p: p[1]), max(col, key=lambda p: p[1])}
        out += sorted(keep)
    return out


class Chart:
    """One SVG: a plot area with the shared step axis; elements are appended, then `svg()`."""

    def __init__(self, chart_id: str, run: RunData, height: int) -> None:
        self.id, self.run, self.height = chart_id, run, height
        self.lo, self.hi = run.step_range
        self.plot_top, self.plot_bottom = TOP, height - BOTTOM
        self.parts: list[str] = []
        self.points = 0

    def x(self, step: float) -> float:
        return LEFT + (step - self.lo) / (self.hi - self.lo) * (WIDTH - LEFT - RIGHT)

    def add(self, s: str) -> None:
        self.parts.append(s)

    def background(self) -> None:
        """Phase bands, the step grid and ticks, spike onsets."""
        t, b = self.plot_top, self.plot_bottom
        for start, end, ph in coarse_bands(phase_bands(self.run), self.lo, self.hi,
                                           WIDTH - LEFT - RIGHT):
            x0, x1 = self.x(start), self.x(end)
            self.add(f'<rect class="phase phase-{ph}" x="{_fmt(x0)}" y="{t}" '
                     f'width="{_fmt(max(x1 - x0, 0.5))}" height="{b - t}" fill="{PHASES[ph][1]}">'
                     f"<title>phase {escape(PHASES[ph][0])}: steps {start}–{end}</title></rect>")
        for s in nice_ticks(self.lo, self.hi, 10):
            xs = _fmt(self.x(s))
            self.add(f'<line x1="{xs}" x2="{xs}" y1="{t}" y2="{b}" stroke="#000" '
                     f'stroke-opacity="0.08"/><text x="{xs}" y="{b + 16}" font-size="11" '
                     f'text-anchor="middle" fill="#444">{s:g}</text>')
        for onset in self.run.onsets:
            xs = _fmt(self.x(onset))
            self.add(f'<line class="onset" x1="{xs}" x2="{xs}" y1="{t}" y2="{b}" '
                     f'stroke="{ONSET_COLOR}" stroke-width="1.2" stroke-dasharray="5 3">'
                     f"<title>loss spike onset at step {onset}</title></line>")

    def frame(self) -> None:
        self.add(f'<rect x="{LEFT}" y="{self.plot_top}" width="{WIDTH - LEFT - RIGHT}" '
                 f'height="{self.plot_bottom - self.plot_top}" fill="none" stroke="#888"/>')

    def y_axis(self, ax: Axis, label: str, right: bool = False) -> None:
        xa = WIDTH - RIGHT if right else LEFT
        anchor, dx = ("start", 6) if right else ("end", -6)
        for v in ax.ticks():
            y = ax(v)
            if not self.plot_top - 0.5 <= y <= self.plot_bottom + 0.5:
                continue
            if not right:
                self.add(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_fmt(y)}" y2="{_fmt(y)}" '
                         f'stroke="#000" stroke-opacity="0.08"/>')
            self.add(f'<text x="{xa + dx}" y="{_fmt(y + 4)}" font-size="11" '
                     f'text-anchor="{anchor}" fill="#444">{v:g}</text>')
        mid = (self.plot_top + self.plot_bottom) / 2
        xl = WIDTH - 14 if right else 14
        self.add(f'<text x="{xl}" y="{_fmt(mid)}" font-size="12" text-anchor="middle" fill="#333" '
                 f'transform="rotate({90 if right else -90} {xl} {_fmt(mid)})">'
                 f"{escape(label)}</text>")

    def line(self, ln: Line, ax: Axis) -> None:
        """The series as a path broken at undrawable values, plus edge markers for those."""
        segs: list[Points] = [[]]
        for s, v in ln.points:
            if ax.edge(v) is None:
                segs[-1].append((s, v))
            elif segs[-1]:
                segs.append([])
        d = []
        for seg in segs:
            pts = thin(seg, self.x)
            self.points += len(pts)
            d += [f"{'M' if i == 0 else 'L'}{_fmt(self.x(s))} {_fmt(ax(v))}"
                  for i, (s, v) in enumerate(pts)]
        dash = ' stroke-dasharray="6 3"' if ln.dashed else ""
        if d:
            self.add(f'<path class="series" data-metric="{escape(ln.metric)}" d="{" ".join(d)}" '
                     f'fill="none" stroke="{ln.color}" stroke-width="1.6"{dash}>'
                     f"<title>{escape(ln.label)}</title></path>")
        if sum(len(s) for s in segs) == 1:
            s, v = next(p for seg in segs for p in seg)
            self.add(f'<circle cx="{_fmt(self.x(s))}" cy="{_fmt(ax(v))}" r="3" '
                     f'fill="{ln.color}"/>')
        self.edge_markers(ln, ax)

    def edge_markers(self, ln: Line, ax: Axis) -> None:
        """Values off the scale: NaN/+Inf/above at the top edge (×), −Inf/below/≤ 0 on a log
        axis at the bottom (▼); one marker per pixel column, its tooltip lists the values."""
        t, b = self.plot_top, self.plot_bottom
        cols: dict[tuple[int, str], list[tuple[int, float]]] = {}
        for s, v in ln.points:
            where = ax.edge(v)
            if where is not None:
                cols.setdefault((int(self.x(s)), where), []).append((s, v))
        for (col, where), pts in cols.items():
            self.points += 1
            what = ", ".join(f"step {s}: {_num(v)}" for s, v in pts[:5])
            more = f" (+{len(pts) - 5} more)" if len(pts) > 5 else ""
            tip = f"<title>{escape(ln.label)} {what}{more}</title>"
            if where == "top":
                y = t + 6
                shape = (f"M{col - 4} {y - 4} L{col + 4} {y + 4} "
                         f"M{col + 4} {y - 4} L{col - 4} {y + 4}")
                self.add(f'<path class="nonfinite" d="{shape}" stroke="{ln.color}" '
                         f'stroke-width="2.2">{tip}</path>')
            else:
                y = b - 6
                self.add(f'<path class="nonfinite" d="M{col - 5} {y - 5} L{col + 5} {y - 5} '
                         f'L{col} {y + 4} Z" fill="{ln.color}">{tip}</path>')

    def off_scale(self, ln: Line, ax: Axis) -> tuple[int, int]:
        """How many values of `ln` are marked at the (top, bottom) edge."""
        where = [ax.edge(v) for _, v in ln.points]
        return where.count("top"), where.count("bottom")

    def legend(self, items: Sequence[tuple[str, str, bool]], x0: float = LEFT) -> None:
        """Items (label, colour, dashed) in the top margin; a label starting with × is a marker."""
        x = x0
        for label, color, dashed in items:
            if label.startswith("×"):
                self.add(f'<text x="{_fmt(x + 4)}" y="19" font-size="14" font-weight="700" '
                         f'fill="{color}">×</text><text x="{_fmt(x + 18)}" y="19" font-size="12" '
                         f'fill="#222">{escape(label[1:].strip())}</text>')
                x += 30 + 6.6 * len(label)
                continue
            dash = ' stroke-dasharray="6 3"' if dashed else ""
            self.add(f'<line x1="{_fmt(x)}" x2="{_fmt(x + 22)}" y1="15" y2="15" stroke="{color}" '
                     f'stroke-width="2.5"{dash}/><text x="{_fmt(x + 27)}" y="19" font-size="12" '
                     f'fill="#222">{escape(label)}</text>')
            x += 40 + 6.6 * len(label)

    def note(self, lines: Sequence[str]) -> None:
        for i, text in enumerate(reversed(lines)):
            y = self.plot_bottom - 8 - 15 * i
            self.add(f'<text class="note" x="{WIDTH - RIGHT - 8}" y="{y}" '
                     f'font-size="12" font-style="italic" text-anchor="end" fill="#555">'
                     f"{escape(text)}</text>")

    def svg(self, title: str) -> str:
        lo, hi = self.lo, self.hi
        return (f'<svg id="{self.id}" class="chart" data-points="{self.points}" '
                f'data-step-lo="{lo}" data-step-hi="{hi}" data-left="{LEFT}" '
                f'data-plot-width="{WIDTH - LEFT - RIGHT}" viewBox="0 0 {WIDTH} {self.height}" '
                f'width="{WIDTH}" height="{self.height}" role="img" '
                f'style="{FONT};width:100%;height:auto" '
                f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
                + "".join(self.parts) + "</svg>")


def panel_svg(p: Panel, run: RunData) -> str:
    """One signal panel as SVG."""
    c = Chart(p.id, run, HEIGHT)
    c.background()
    left = Axis(*p.limits(False), p.log, c.plot_top, c.plot_bottom)
    c.y_axis(left, p.ylabel + (" (log)" if left.log else ""))
    if p.threshold is not None:
        y = _fmt(left(p.threshold))
        c.add(f'<line class="threshold" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y}" y2="{y}" '
              f'stroke="{THRESHOLD_COLOR}" stroke-width="1.4" stroke-dasharray="2 3">'
              f"<title>threshold {p.threshold:g}</title></line>")
    axes = [(ln, left) for ln in p.axis_lines(False)]
    if p.id == "chart-loss":
        for k, onset in enumerate(run.onsets):
            near_end = onset > c.lo + 0.92 * (c.hi - c.lo)  # label left of the line there
            x, anchor = (c.x(onset) - 4, "end") if near_end else (c.x(onset) + 4, "start")
            c.add(f'<text class="onset-label" x="{_fmt(x)}" y="{c.plot_top + 32 + 16 * (k % 2)}" '
                  f'text-anchor="{anchor}" font-size="12" font-weight="700" '
                  f'fill="{ONSET_COLOR}">onset {onset}</text>')
    if p.axis_lines(True):
        rax = Axis(*p.limits(True), p.right_log, c.plot_top, c.plot_bottom)
        c.y_axis(rax, p.right_label, right=True)
        axes += [(ln, rax) for ln in p.axis_lines(True)]
    for ln, ax in axes:
        c.line(ln, ax)
    c.frame()
    items = [(ln.label, ln.color, ln.dashed) for ln in p.lines]
    if p.threshold is not None:
        items.append((f"threshold {p.threshold:g}", THRESHOLD_COLOR, True))
    if p.id == "chart-loss" and run.onsets:
        items.append(("spike onset", ONSET_COLOR, True))
    for ln, ax in axes:
        top, bottom = c.off_scale(ln, ax)
        if top or bottom:
            items.append((f"× {ln.metric}: {top} NaN/+Inf/above (top), {bottom} −Inf/below/≤ 0 "
                          "(bottom)", ln.color, False))
    c.legend(items)
    c.note((["no data"] if not p.lines else []) + p.notes)
    return c.svg(p.title)


def alerts_svg(run: RunData) -> str:
    """The alert episodes as spans on the step axis, one row per rule (light: pending)."""
    rules = alert_rules(run)
    c = Chart("chart-alerts", run, TOP + BOTTOM + ROW * max(len(rules), 1) + 6)
    c.background()
    last = run.step_range[1]
    for a in run.alerts:
        top = c.plot_top + 3 + ROW * rules.index(a.rule)
        color = severity_color(a.severity)
        end = a.resolved_step if a.resolved_step is not None else last
        pend_end = a.fired_step if a.fired_step is not None else end
        fired = "never fired" if a.fired_step is None else f"fired {a.fired_step}"
        resolved = ("resolved " + str(a.resolved_step) if a.resolved_step is not None
                    else "not resolved")  # fmt: skip
        tip = escape(f"{a.rule} [{a.severity}] {a.state}: pending {a.first_step}, {fired}, "
                     f"{resolved}, value {_num(a.value)}")  # fmt: skip
        c.add(f'<g class="alert-span" data-rule="{escape(a.rule)}" data-severity='
              f'"{escape(a.severity)}"><title>{tip}</title>')
        x0, x1 = c.x(a.first_step), c.x(pend_end)
        c.add(f'<rect x="{_fmt(x0)}" y="{top + 13}" width="{_fmt(max(x1 - x0, 2))}" height="12" '
              f'fill="{color}" fill-opacity="0.3"/>')
        if a.fired_step is not None:
            x0, x1 = c.x(a.fired_step), c.x(end)
            c.add(f'<rect x="{_fmt(x0)}" y="{top + 13}" width="{_fmt(max(x1 - x0, 2))}" '
                  f'height="12" fill="{color}"/>')
            if a.resolved_step is None:
                c.add(f'<path d="M{_fmt(x1)} {top + 12} L{_fmt(x1 + 9)} {top + 19} '
                      f'L{_fmt(x1)} {top + 26} Z" fill="{color}"/>')
        c.add("</g>")
        c.points += 1
    for a, onset, n in run.credited_leads:  # the lead the backtest credits, left of its onset
        y = c.plot_top + 13 + ROW * rules.index(a.rule)
        c.add(f'<text class="lead" x="{_fmt(c.x(onset) - 4)}" y="{y}" text-anchor="end" '
              f'font-size="11.5" font-weight="700" fill="{severity_color(a.severity)}">'
              f"lead {n}</text>")
    for i, rule in enumerate(rules):
        sev = next(a.severity for a in run.alerts if a.rule == rule)
        c.add(f'<text x="{LEFT + 4}" y="{c.plot_top + 13 + ROW * i}" font-size="11.5" '
              f'fill="{severity_color(sev)}" font-weight="600">{escape(rule)}</text>')
    c.frame()
    sevs = [s for s in ("page", "warning", "info") if any(a.severity == s for a in run.alerts)]
    c.legend([(s, severity_color(s), False) for s in sevs])
    c.note([] if rules else ["no alerts for this run"])
    return c.svg("alerts")
