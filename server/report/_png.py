"""The postmortem image: the panels of `_draw` stacked on one shared step axis, as PNG."""

from __future__ import annotations

from typing import Final

from spikewatch.server.report._draw import (
    draw_alerts,
    draw_panel,
    drawing,
    figure,
    phase_legend,
    png_of,
)
from spikewatch.server.report._layout import Layout

WIDTH_IN: Final = 14.0
HEIGHT_IN: Final = 18.0
DPI: Final = 100
SIZE_PX: Final = (int(WIDTH_IN * DPI), int(HEIGHT_IN * DPI))
"""(width, height) of the PNG in pixels."""


def render_png(lay: Layout) -> bytes:
    """The report image as PNG bytes, `SIZE_PX` pixels."""
    run = lay.run
    with drawing():
        fig = figure(WIDTH_IN, HEIGHT_IN, DPI)
        n_rules = len(lay.rules)
        ratios = [3.2, 2.6, 2.6, 2.2, min(max(0.9, 0.45 * n_rules + 0.6), 3.0)]
        axes = fig.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios})
        # the layout first: thinning and phase bands follow each axes' width in pixels
        fig.subplots_adjust(left=0.1, right=0.93, top=0.945, bottom=0.035, hspace=0.28)
        for ax, p in zip(axes, lay.panels, strict=False):
            draw_panel(ax, p, lay)
        draw_alerts(axes[-1], lay)
        axes[-1].set_xlabel("step")
        lo, hi = run.step_range
        onsets = run.onsets
        sub = (f"steps {lo}–{hi} · {len(onsets)} loss spike onset(s)"
               + (f" at {', '.join(map(str, onsets[:8]))}" if onsets else "")
               + f" · {sum(1 for a in run.alerts if a.fired_step is not None)} alert(s) fired")
        fig.suptitle(f"spikewatch postmortem — run {run.name}", x=0.01, ha="left", y=0.995,
                     fontsize=15, fontweight="bold")  # fmt: skip
        fig.text(0.01, 0.972, sub, fontsize=10, color="#444444")
        phase_legend(fig, lay)
        return png_of(fig)
