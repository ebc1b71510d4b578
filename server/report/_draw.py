"""The charts drawn with matplotlib, one axes per panel, for the PNG and the page alike.

`_png` stacks the axes into one image; `_charts` draws each in a figure of its own and keeps
matplotlib's SVG for the page. Long series are thinned per pixel column of their axes (`thin`);
values that cannot be drawn become markers at the panel's edge, one per pixel column, never thinned
away. Each artist a page reader may look for gets a gid and a `Tag`, which `_charts` writes into
the SVG (the PNG ignores them).

matplotlib is optional (extra ``report``): without it, importing this module raises `ReportError`
with the install hint.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Final

from spikewatch.server.report._data import Alert, Points, ReportError
from spikewatch.server.report._guards import GuardSpan, merge_spans
from spikewatch.server.report._layout import (
    ALERTS_ID,
    GUARD_COLOR,
    ONSET_COLOR,
    PHASES,
    SEVERITY_COLORS,
    THRESHOLD_COLOR,
    Layout,
    Line,
    Panel,
    coarse_bands,
    severity_color,
    split,
    thin,
    value_text,
)

try:
    import matplotlib as mpl
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
except ImportError as e:  # the extra is not installed
    raise ReportError(f"the report needs matplotlib: pip install 'spikewatch[report]' ({e})") from e

EDGE_MARKS: Final = {"top": (0.97, "X", "NaN/+Inf/above"), "bottom": (0.03, "v", "−Inf/below/≤ 0")}
"""Edge → (height in the axes, marker, what it stands for)."""
ALERTS_TITLE: Final = "Alerts (light: pending, solid: firing, ▶: still firing)"
LEGEND: Final[dict[str, Any]] = {"loc": "lower right", "bbox_to_anchor": (1.0, 1.0),
                                 "fontsize": 8.5, "frameon": False, "borderaxespad": 0.1,
                                 "handlelength": 1.6, "columnspacing": 1.2}  # fmt: skip
"""Legends sit in one row above their axes, right-aligned (the title is on the left)."""
MAX_LISTED: Final = 5
"""Values a tooltip lists before "(+N more)"."""


def drawing() -> AbstractContextManager[None]:
    """The matplotlib settings every report figure is built and saved under: text stays text in
    the SVG (readable in the DOM), and a line keeps every point `thin` kept."""
    return mpl.rc_context({"svg.fonttype": "none", "path.simplify": False})


def figure(width_in: float, height_in: float, dpi: int) -> Figure:
    return Figure(figsize=(width_in, height_in), dpi=dpi)


def png_of(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def svg_of(fig: Figure, salt: str) -> bytes:
    """The figure as SVG; `salt` makes its internal ids (clip paths, markers) unique in a page."""
    buf = io.BytesIO()
    with mpl.rc_context({"svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


@dataclass(frozen=True, slots=True)
class Tag:
    """What the page says about one artist: a class, data-* attributes, a tooltip, and for a row
    of markers one tooltip per marker in drawing order."""

    cls: str
    title: str
    data: dict[str, str]
    marks: list[str]


@dataclass
class Drawn:
    """One chart as drawn: its id, the points it drew, the tags of its artists by gid."""

    chart: str
    points: int = 0
    tags: dict[str, Tag] = field(default_factory=dict)

    def tag(self, artist: Artist, cls: str, title: str, *, marks: Sequence[str] = (),
            **data: object) -> None:  # fmt: skip
        """Give `artist` a gid unique in the page and remember how the page describes it."""
        gid = f"{self.chart}-{cls}-{len(self.tags)}"
        artist.set_gid(gid)
        self.tags[gid] = Tag(cls, title, {k: str(v) for k, v in data.items()}, list(marks))


def _column(ax: Axes, lay: Layout) -> Callable[[int], float]:
    """Step → pixel column of `ax` (its layout must be final)."""
    lo, hi = lay.run.step_range
    width = max(ax.bbox.width, 1.0)
    return lambda step: (step - lo) / (hi - lo) * width


def _listed(what: str, pts: Points) -> str:
    more = f" (+{len(pts) - MAX_LISTED} more)" if len(pts) > MAX_LISTED else ""
    return f"{what} " + ", ".join(f"step {s}: {value_text(v)}" for s, v in pts[:MAX_LISTED]) + more


def _background(ax: Axes, lay: Layout, d: Drawn) -> None:
    """Phase bands (one artist per phase, at most one band per pixel column), onset lines."""
    lo, hi = lay.run.step_range
    ax.set_xlim(lo, hi)
    by_phase: dict[int, list[tuple[int, int]]] = {}
    for start, end, ph in coarse_bands(lay.bands, lo, hi, int(ax.bbox.width)):
        by_phase.setdefault(ph, []).append((start, end))
    for ph, spans in sorted(by_phase.items()):
        coll = PolyCollection([[(a, 0), (b, 0), (b, 1), (a, 1)] for a, b in spans],
                              facecolors=PHASES[ph][1], linewidths=0,
                              transform=ax.get_xaxis_transform(), zorder=0)  # fmt: skip
        ax.add_collection(coll, autolim=False)
        shown = ", ".join(f"{a}–{b}" for a, b in spans[:MAX_LISTED])
        more = f" (+{len(spans) - MAX_LISTED} more)" if len(spans) > MAX_LISTED else ""
        d.tag(coll, "phase", f"phase {PHASES[ph][0]}: steps {shown}{more}", phase=ph)
    for onset in lay.run.onsets:
        d.tag(ax.axvline(onset, color=ONSET_COLOR, ls="--", lw=1.1, zorder=3), "onset",
              f"loss spike onset at step {onset}", step=onset)  # fmt: skip


def _edge_marks(ax: Axes, d: Drawn, ln: Line, off: dict[str, Points],
                column: Callable[[int], float]) -> None:  # fmt: skip
    """The values of `ln` that cannot be drawn (`off`, by edge): a marker per pixel column at the
    top or bottom edge, whose tooltip lists them; the legend counts them."""
    for where, (height, marker, what) in EDGE_MARKS.items():
        cols: dict[int, Points] = {}
        for s, v in off[where]:
            cols.setdefault(int(column(s)), []).append((s, v))
        if not cols:
            continue
        label = f"{ln.metric}: {len(off[where])} {what}"
        (art,) = ax.plot([pts[0][0] for pts in cols.values()], [height] * len(cols),
                         transform=ax.get_xaxis_transform(), ls="none", marker=marker, ms=7,
                         color=ln.style.color, mec="white", mew=0.6, clip_on=False, zorder=6,
                         label=label)  # fmt: skip
        d.points += len(cols)
        d.tag(art, "nonfinite", label, marks=[_listed(ln.style.label, p) for p in cols.values()],
              metric=ln.metric, edge=where)  # fmt: skip


def _lines(ax: Axes, d: Drawn, lines: list[Line], lims: tuple[float, float], log: bool,
           lay: Layout) -> None:  # fmt: skip
    """`lines` on one y axis: each thinned, broken where a value goes to the edge instead."""
    if log:
        ax.set_yscale("log")
    else:  # absolute tick labels (1.0002, not "+1" and 2e-4)
        ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_ylim(*lims)
    column = _column(ax, lay)
    offs = []
    for ln in lines:
        stretches, off = split(ln, *lims, log)
        offs.append((ln, off))
        xs: list[float] = []
        ys: list[float] = []
        lone: list[int] = []  # a stretch of one point draws no line: a dot instead
        for stretch in stretches:
            kept = thin(stretch, column)
            if len(kept) == 1:
                lone.append(len(xs))
            xs += [s for s, _ in kept] + [kept[-1][0]]
            ys += [v for _, v in kept] + [math.nan]  # NaN: the line breaks here
        st = ln.style
        (art,) = ax.plot(xs, ys, color=st.color, lw=1.4, ls="--" if st.dashed else "-",
                         label=st.label, zorder=4, marker="o" if lone else "None", ms=4,
                         markevery=lone or None)  # fmt: skip
        n = len(xs) - len(stretches)
        d.points += n
        d.tag(art, "series", st.label, metric=ln.metric, points=n)
    for ln, off in offs:  # over the lines, listed after them in the legend
        _edge_marks(ax, d, ln, off, column)


def _guard_tip(group: list[GuardSpan]) -> str:
    def one(s: GuardSpan) -> str:
        until = "now (still acting)" if s.end is None else str(s.end)
        return f"guard {s.action} from step {s.start} to {until}" + (f": {s.why}" if s.why else "")

    more = f" (+{len(group) - MAX_LISTED} more)" if len(group) > MAX_LISTED else ""
    return "; ".join(one(s) for s in group[:MAX_LISTED]) + more


def _guards(ax: Axes, lay: Layout, d: Drawn) -> None:
    """The guard's actions as bands from start to release (to the run's end while it acts), at
    least two pixel columns wide; actions closer than a column share one band."""
    lo, hi = lay.run.step_range
    px = (hi - lo) / max(ax.bbox.width, 1.0)
    for k, (start, end, group) in enumerate(merge_spans(lay.run.guards, hi, px)):
        band = ax.axvspan(max(start, lo), min(max(end, start + 2 * px), hi),
                          facecolor=to_rgba(GUARD_COLOR, 0.22), edgecolor=GUARD_COLOR, lw=1.0,
                          zorder=2, label="_nolegend_" if k else "guard action")  # fmt: skip
        d.tag(band, "guard", _guard_tip(group), step=start,
              end="" if group[-1].end is None else end, actions=len(group),
              action=",".join(dict.fromkeys(s.action for s in group)))  # fmt: skip


def _notes(ax: Axes, d: Drawn, notes: list[str]) -> None:
    if notes:
        d.tag(ax.text(0.99, 0.04, "\n".join(notes), transform=ax.transAxes, ha="right",
                      va="bottom", fontsize=9, color="#555555", style="italic", zorder=7,
                      bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"}),
              "note", "; ".join(notes))  # fmt: skip


def draw_panel(ax: Axes, p: Panel, lay: Layout) -> Drawn:
    """One signal panel on `ax` (and a twin axes for its right-hand lines)."""
    d = Drawn(p.id)
    run = lay.run
    _background(ax, lay, d)
    ax.set_title(p.title, loc="left", fontsize=11, fontweight="bold")
    ax.set_ylabel(p.ylabel + (" (log)" if p.log else ""))
    ax.grid(True, color="#000000", alpha=0.08, lw=0.6)
    _lines(ax, d, p.axis_lines(False), p.limits(False), p.log, lay)
    if p.threshold is not None:
        d.tag(ax.axhline(p.threshold, color=THRESHOLD_COLOR, ls=":", lw=1.3, zorder=3,
                         label=f"threshold {p.threshold:g}"),
              "threshold", f"threshold {p.threshold:g}", value=p.threshold)  # fmt: skip
    if p.id == "chart-loss":
        _guards(ax, lay, d)
    if p.id == "chart-loss" and run.onsets:
        ax.plot([], [], color=ONSET_COLOR, ls="--", lw=1.1, label="spike onset")
        lo, hi = run.step_range
        for k, onset in enumerate(run.onsets):
            near_end = onset > lo + 0.92 * (hi - lo)  # label on the left near the right edge
            d.tag(ax.annotate(f"onset {onset}", (onset, 0.86 - 0.1 * (k % 2)),
                              xycoords=ax.get_xaxis_transform(), xytext=(-4 if near_end else 4, 0),
                              textcoords="offset points", ha="right" if near_end else "left",
                              color=ONSET_COLOR, fontsize=9, fontweight="bold", zorder=7),
                  "onset-label", f"loss spike onset at step {onset}", step=onset)  # fmt: skip
    handles, labels = ax.get_legend_handles_labels()
    if right := p.axis_lines(True):
        ax2 = ax.twinx()
        ax2.set_ylabel(p.right_label + (" (log)" if p.right_log else ""))
        _lines(ax2, d, right, p.limits(True), p.right_log, lay)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, ncol=len(handles), **LEGEND)
    _notes(ax, d, (["no data"] if not p.lines else []) + p.notes)
    return d


def _alert_tip(a: Alert) -> str:
    fired = "never fired" if a.fired_step is None else f"fired {a.fired_step}"
    resolved = "not resolved" if a.resolved_step is None else f"resolved {a.resolved_step}"
    return (f"{a.rule} [{a.severity}] {a.state}: pending {a.first_step}, {fired}, {resolved}, "
            f"value {value_text(a.value)}")  # fmt: skip


Shape = tuple[list[tuple[float, float]], tuple[float, float, float, float]]
"""A polygon in data coordinates and its RGBA colour."""


def _alert_shapes(a: Alert, row: int, steps: tuple[int, int], px: float) -> list[Shape]:
    """(polygon, colour) of one episode: light pending span, solid firing span, ▶ still firing;
    `px`: a pixel column in steps (a span is at least two wide), inside `steps`."""
    color = severity_color(a.severity)
    first, last = steps
    end = min(a.resolved_step, last) if a.resolved_step is not None else last

    def span(x0: int, x1: int) -> list[tuple[float, float]]:
        x0 = max(x0, first)
        x1f = max(x1, x0 + 2 * px)
        return [(x0, row - 0.21), (x1f, row - 0.21), (x1f, row + 0.21), (x0, row + 0.21)]

    out: list[Shape] = [(span(a.first_step, a.fired_step if a.fired_step is not None else end),
            to_rgba(color, 0.3))]  # fmt: skip
    if a.fired_step is not None:
        out.append((span(a.fired_step, end), to_rgba(color)))
        if a.resolved_step is None:
            tip = max(end, a.fired_step + 2 * px)
            out.append(([(tip, row - 0.3), (tip + 8 * px, row), (tip, row + 0.3)], to_rgba(color)))
    return out


def draw_alerts(ax: Axes, lay: Layout) -> Drawn:
    """The alert episodes as spans on the step axis, one row per rule; `lead N` left of each onset
    an alert led (what the backtest credits)."""
    d = Drawn(ALERTS_ID)
    run, rules = lay.run, lay.rules
    _background(ax, lay, d)
    lo, last = run.step_range
    px = (last - lo) / max(ax.bbox.width, 1.0)
    ax.set_title(ALERTS_TITLE, loc="left", fontsize=11, fontweight="bold")
    for a in run.alerts:
        polys, colors = zip(*_alert_shapes(a, rules.index(a.rule), (lo, last), px), strict=True)
        coll = PolyCollection(list(polys), facecolors=list(colors), linewidths=0, zorder=5,
                              clip_on=False)  # fmt: skip
        ax.add_collection(coll, autolim=False)
        d.points += 1
        d.tag(coll, "alert-span", _alert_tip(a), rule=a.rule, severity=a.severity, state=a.state)
    for a, onset, n in run.credited_leads:
        d.tag(ax.annotate(f"lead {n}", (onset, rules.index(a.rule) - 0.26), xytext=(-4, 0),
                          textcoords="offset points", ha="right", va="bottom", fontsize=8.5,
                          fontweight="bold", color=severity_color(a.severity), zorder=7),
              "lead", f"{a.rule} fired {n} steps before the onset at {onset}", rule=a.rule,
              onset=onset, lead=n)  # fmt: skip
    for y, rule in enumerate(rules):
        sev = next(a.severity for a in run.alerts if a.rule == rule)
        d.tag(ax.annotate(rule, (lo, y - 0.26), xytext=(4, 0), textcoords="offset points",
                          va="bottom", fontsize=9, fontweight="bold", color=severity_color(sev),
                          zorder=7), "rule", f"{rule} [{sev}]", rule=rule)  # fmt: skip
    ax.set_yticks([])
    ax.set_ylim(len(rules) - 0.6 if rules else 0.5, -0.85)
    ax.grid(True, axis="x", color="#000000", alpha=0.08, lw=0.6)
    _notes(ax, d, [] if rules else ["no alerts for this run"])
    if sevs := [s for s in SEVERITY_COLORS if any(a.severity == s for a in run.alerts)]:
        ax.legend([Patch(color=SEVERITY_COLORS[s]) for s in sevs], sevs, ncol=len(sevs), **LEGEND)
    return d


def phase_legend(fig: Figure, lay: Layout) -> None:
    """The phases shaded in this run, in the figure's top right corner (or why none are)."""
    if bands := sorted({ph for _, _, ph in lay.bands}):
        fig.legend([Patch(color=PHASES[k][1], ec="#999999") for k in bands],
                   [PHASES[k][0] for k in bands], loc="upper right",
                   bbox_to_anchor=(0.995, 0.985), ncol=len(bands), fontsize=9, title="phase",
                   title_fontsize=9, frameon=False)  # fmt: skip
    else:
        fig.text(0.99, 0.972, "no phase series: phases not shaded", ha="right", fontsize=9,
                 color="#555555", style="italic")  # fmt: skip
