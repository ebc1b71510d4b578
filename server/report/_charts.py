"""The page's charts: each panel drawn by `_draw` in a figure of its own, kept as matplotlib's SVG
and marked for readers of the DOM.

Every chart is an ``<svg class="chart">`` with the panel's id and ``data-points``: what it drew
(line vertices plus edge markers; alert spans in the alert chart). ``data-step-lo``/``-hi`` give
its step range and ``data-plot-left``/``-right``/``-top``/``-bottom`` the plot area as fractions
of its width and height (the page's cursor reads them). Inside, each artist a reader may look for
is a ``<g>`` with a class (``series``, ``nonfinite``, ``threshold``, ``onset``, ``onset-label``,
``phase``, ``alert-span``, ``lead``, ``rule``, ``note``), data-* attributes and a ``<title>``
tooltip; each marker of a ``nonfinite`` row has a tooltip of its own. matplotlib's own group ids
are dropped so that several charts can share one page.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Final

from spikewatch.server.report._draw import Drawn, draw_alerts, draw_panel, drawing, figure, svg_of
from spikewatch.server.report._layout import Layout, Panel

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SVG_NS: Final = "http://www.w3.org/2000/svg"
ET.register_namespace("", SVG_NS)
ET.register_namespace("xlink", "http://www.w3.org/1999/xlink")

WIDTH_IN: Final = 12.0
DPI: Final = 100
"""A chart is WIDTH_IN × DPI pixel columns wide (what thinning keeps per column)."""
PANEL_IN: Final = 2.8
ALERTS_IN: Final = 1.0
ROW_IN: Final = 0.32
"""Height of a signal panel; of the alert chart without rows, and per rule row."""
MARGIN_IN: Final = {"left": 0.9, "right": 0.9, "top": 0.5, "bottom": 0.35}


def _figure(height_in: float) -> Figure:
    fig = figure(WIDTH_IN, height_in, DPI)
    m = MARGIN_IN
    fig.subplots_adjust(left=m["left"] / WIDTH_IN, right=1 - m["right"] / WIDTH_IN,
                        top=1 - m["top"] / height_in, bottom=m["bottom"] / height_in)  # fmt: skip
    fig.add_subplot()
    return fig


def _q(tag: str) -> str:
    return f"{{{SVG_NS}}}{tag}"


def _title(text: str) -> ET.Element:
    el = ET.Element(_q("title"))
    el.text = text
    return el


def _mark(svg: bytes, d: Drawn, fig: Figure, lay: Layout, title: str) -> str:
    """matplotlib's SVG of one chart with the ids, classes, data and tooltips of `d`."""
    root = ET.fromstring(svg)
    for meta in root.findall(_q("metadata")):
        root.remove(meta)
    for el in list(root.iter()):
        tag = d.tags.get(el.get("id", ""))
        if tag is None:
            if el.tag == _q("g"):
                el.attrib.pop("id", None)  # matplotlib's "axes_1", "line2d_3", ...: not unique
            continue
        el.set("class", tag.cls)
        for k, v in tag.data.items():
            el.set(f"data-{k}", v)
        el.insert(0, _title(tag.title))
        for use, mark in zip(el.iter(_q("use")), tag.marks, strict=False):
            use.append(_title(mark))
    pos = fig.axes[0].get_position()
    lo, hi = lay.run.step_range
    for size in ("width", "height"):
        root.attrib.pop(size, None)  # the viewBox keeps the aspect; the page sets the width
    root.attrib.update({
        "id": d.chart, "class": "chart", "role": "img", "data-points": str(d.points),
        "data-step-lo": str(lo), "data-step-hi": str(hi),
        "data-plot-left": f"{pos.x0:.5f}", "data-plot-right": f"{pos.x1:.5f}",
        "data-plot-top": f"{1 - pos.y1:.5f}", "data-plot-bottom": f"{1 - pos.y0:.5f}",
    })  # fmt: skip
    root.insert(0, _title(title))
    return ET.tostring(root, encoding="unicode")


def panel_svg(p: Panel, lay: Layout) -> str:
    """One signal panel as an inline SVG element."""
    with drawing():
        fig = _figure(PANEL_IN)
        d = draw_panel(fig.axes[0], p, lay)
        return _mark(svg_of(fig, p.id), d, fig, lay, p.title)


def alerts_svg(lay: Layout) -> str:
    """The alert chart as an inline SVG element, one row per rule."""
    with drawing():
        fig = _figure(ALERTS_IN + ROW_IN * max(len(lay.rules), 1))
        d = draw_alerts(fig.axes[0], lay)
        return _mark(svg_of(fig, d.chart), d, fig, lay, "alerts")


def chart_svgs(lay: Layout) -> list[str]:
    """Every chart of the page, top to bottom."""
    return [panel_svg(p, lay) for p in lay.panels] + [alerts_svg(lay)]
