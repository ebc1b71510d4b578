"""The postmortem image: stacked matplotlib panels sharing the step axis (Agg backend, no display).

matplotlib is an optional dependency (extra ``report``); it is imported here only, when a report
is drawn, and `require_matplotlib` turns its absence into a clear error.
"""

from __future__ import annotations

import io
import math
from typing import Any, Final

from spikewatch.server.report._data import ReportError, RunData
from spikewatch.server.report._layout import (
    ONSET_COLOR,
    PHASES,
    SEVERITY_COLORS,
    THRESHOLD_COLOR,
    Line,
    Panel,
    alert_rules,
    coarse_bands,
    edge,
    panels,
    phase_bands,
    severity_color,
)

WIDTH_IN: Final = 14.0
HEIGHT_IN: Final = 18.0
DPI: Final = 100
SIZE_PX: Final = (int(WIDTH_IN * DPI), int(HEIGHT_IN * DPI))
"""(width, height) of the PNG in pixels."""
BAND_COLUMNS: Final = 1200
"""Resolution at which phase bands are drawn (about one per pixel column of a panel)."""


def require_matplotlib() -> None:
    """Raise `ReportError` with the install hint when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ReportError("the report needs matplotlib: pip install 'spikewatch[report]'") from None


def _edge_markers(ax: Any, ln: Line, lo: float, hi: float, log: bool) -> None:
    """Values that cannot be drawn as markers on the panel's edges, counted in the legend."""
    tr = ax.get_xaxis_transform()
    marks = {"top": (0.97, "X", "NaN/+Inf/above"), "bottom": (0.03, "v", "−Inf/below/≤ 0")}
    for where, (y, marker, what) in marks.items():
        steps = [s for s, v in ln.points if edge(v, lo, hi, log) == where]
        if steps:
            ax.plot(steps, [y] * len(steps), transform=tr, ls="none", marker=marker, ms=7,
                    color=ln.color, mec="white", mew=0.6, clip_on=False, zorder=6,
                    label=f"{ln.metric}: {len(steps)} {what}")  # fmt: skip


def _draw_lines(ax: Any, lines: list[Line], lims: tuple[float, float], log: bool) -> None:
    lo, hi = lims
    if log:
        ax.set_yscale("log")
    else:  # absolute tick labels (1.0002, not "+1" and 2e-4)
        ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_ylim(lo, hi)
    for ln in lines:
        xs = [s for s, _ in ln.points]
        ys = [v if edge(v, lo, hi, log) is None else math.nan for _, v in ln.points]
        ax.plot(xs, ys, color=ln.color, lw=1.4, ls="--" if ln.dashed else "-", label=ln.label,
                zorder=4)  # fmt: skip
        if sum(1 for y in ys if not math.isnan(y)) == 1:  # a single point draws no line
            ax.plot(xs, ys, color=ln.color, marker="o", ms=4, ls="none", zorder=4)
    for ln in lines:
        _edge_markers(ax, ln, lo, hi, log)


def _shade(ax: Any, run: RunData) -> None:
    from matplotlib.collections import PolyCollection

    lo, hi = run.step_range
    by_phase: dict[int, list[list[tuple[float, float]]]] = {}
    for start, end, ph in coarse_bands(phase_bands(run), lo, hi, BAND_COLUMNS):
        by_phase.setdefault(ph, []).append([(start, 0), (end, 0), (end, 1), (start, 1)])
    for ph, verts in by_phase.items():  # one artist per phase, however many bands
        ax.add_collection(PolyCollection(verts, facecolors=PHASES[ph][1], linewidths=0,
                                         transform=ax.get_xaxis_transform(), zorder=0),
                          autolim=False)
    for onset in run.onsets:
        ax.axvline(onset, color=ONSET_COLOR, ls="--", lw=1.1, zorder=3)


def _panel(ax: Any, p: Panel, run: RunData) -> None:
    _shade(ax, run)
    ax.set_title(p.title, loc="left", fontsize=11, fontweight="bold")
    ax.set_ylabel(p.ylabel)
    ax.grid(True, color="#000000", alpha=0.08, lw=0.6)
    _draw_lines(ax, p.axis_lines(False), p.limits(False), p.log)
    if p.threshold is not None:
        ax.axhline(p.threshold, color=THRESHOLD_COLOR, ls=":", lw=1.3, zorder=3,
                   label=f"threshold {p.threshold:g}")  # fmt: skip
    if p.id == "chart-loss" and run.onsets:
        ax.plot([], [], color=ONSET_COLOR, ls="--", lw=1.1, label="spike onset")
        lo, hi = run.step_range
        for k, onset in enumerate(run.onsets):
            near_end = onset > lo + 0.92 * (hi - lo)  # label on the left near the right edge
            ax.text(onset, 0.86 - 0.1 * (k % 2),
                    f"onset {onset} " if near_end else f" onset {onset}",
                    transform=ax.get_xaxis_transform(), ha="right" if near_end else "left",
                    color=ONSET_COLOR, fontsize=9, fontweight="bold", zorder=7)  # fmt: skip
    handles, labels = ax.get_legend_handles_labels()
    right = p.axis_lines(True)
    if right:
        ax2 = ax.twinx()
        ax2.set_ylabel(p.right_label)
        _draw_lines(ax2, right, p.limits(True), p.right_log)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8.5,
                  ncol=len(handles), frameon=False, borderaxespad=0.1)  # fmt: skip
    notes = list(p.notes)
    if not p.lines:
        notes.insert(0, "no data")
    if notes:
        ax.text(0.99, 0.04, "\n".join(notes), transform=ax.transAxes, ha="right", va="bottom",
                fontsize=9, color="#555555", style="italic", zorder=7,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})  # fmt: skip


def _alerts(ax: Any, run: RunData) -> None:
    from matplotlib.patches import Patch

    _shade(ax, run)
    rules = alert_rules(run)
    lo, last = run.step_range
    ax.set_title("Alerts (light: pending, solid: firing, ▶: still firing)", loc="left",
                 fontsize=11, fontweight="bold")  # fmt: skip
    for a in run.alerts:
        y = rules.index(a.rule)
        color = severity_color(a.severity)
        end = a.resolved_step if a.resolved_step is not None else last
        pend_end = a.fired_step if a.fired_step is not None else end
        ax.barh(y, max(pend_end - a.first_step, 0.5), left=a.first_step, height=0.42,
                color=color, alpha=0.3, zorder=4)  # fmt: skip
        if a.fired_step is not None:
            ax.barh(y, max(end - a.fired_step, 0.5), left=a.fired_step, height=0.42,
                    color=color, alpha=0.9, zorder=5)  # fmt: skip
            if a.resolved_step is None:
                ax.plot([end], [y], marker=">", color=color, ms=8, zorder=6, clip_on=False)
    for a, onset, n in run.credited_leads:  # the lead the backtest credits, left of its onset
        ax.text(onset, rules.index(a.rule) - 0.26, f"lead {n} ", ha="right",
                va="bottom", fontsize=8.5, fontweight="bold", color=severity_color(a.severity),
                zorder=7)  # fmt: skip
    for y, rule in enumerate(rules):
        sev = next(a.severity for a in run.alerts if a.rule == rule)
        ax.text(lo, y - 0.26, f" {rule}", va="bottom", fontsize=9, fontweight="bold",
                color=severity_color(sev), zorder=7)  # fmt: skip
    ax.set_yticks([])
    ax.set_ylim(len(rules) - 0.6 if rules else 0.5, -0.85)
    ax.grid(True, axis="x", color="#000000", alpha=0.08, lw=0.6)
    if not rules:
        ax.text(0.5, 0.5, "no alerts for this run", transform=ax.transAxes, ha="center",
                va="center", color="#555555", style="italic")  # fmt: skip
    sevs = [s for s in SEVERITY_COLORS if any(a.severity == s for a in run.alerts)]
    if sevs:
        ax.legend([Patch(color=SEVERITY_COLORS[s]) for s in sevs], sevs, loc="lower right",
                  bbox_to_anchor=(1.0, 1.0), fontsize=8.5, ncol=len(sevs), frameon=False,
                  borderaxespad=0.1)  # fmt: skip


def render_png(run: RunData) -> bytes:
    """The report image as PNG bytes, `SIZE_PX` pixels."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ps = panels(run)
    n_rules = len(alert_rules(run))
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    ratios = [3.2, 2.6, 2.6, 2.2, min(max(0.9, 0.45 * n_rules + 0.6), 3.0)]
    axes = fig.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios})
    for ax, p in zip(axes, ps, strict=False):
        _panel(ax, p, run)
    _alerts(axes[-1], run)
    lo, hi = run.step_range
    axes[-1].set_xlim(lo, hi)
    axes[-1].set_xlabel("step")
    onsets = run.onsets
    sub = (f"steps {lo}–{hi} · {len(onsets)} loss spike onset(s)"
           + (f" at {', '.join(map(str, onsets[:8]))}" if onsets else "")
           + f" · {sum(1 for a in run.alerts if a.fired_step is not None)} alert(s) fired")
    fig.suptitle(f"spikewatch postmortem — run {run.name}", x=0.01, ha="left", y=0.995,
                 fontsize=15, fontweight="bold")  # fmt: skip
    fig.text(0.01, 0.972, sub, fontsize=10, color="#444444")
    bands = {ph for _, _, ph in phase_bands(run)}
    if bands:
        fig.legend([Patch(color=PHASES[k][1], ec="#999999") for k in sorted(bands)],
                   [PHASES[k][0] for k in sorted(bands)], loc="upper right",
                   bbox_to_anchor=(0.995, 0.985), ncol=len(bands), fontsize=9,
                   title="phase", title_fontsize=9, frameon=False)  # fmt: skip
    else:
        fig.text(0.99, 0.972, "no phase series: phases not shaded", ha="right", fontsize=9,
                 color="#555555", style="italic")  # fmt: skip
    fig.subplots_adjust(left=0.1, right=0.93, top=0.945, bottom=0.035, hspace=0.28)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
