"""The self-contained HTML page: summary, run metadata, alert and guard tables, SVG charts and the
PNG (the report's; the server's run page has none).

Nothing is loaded from elsewhere: styles and the small cursor script are inline, the charts are
matplotlib's SVG inline (`_charts`), and the PNG is embedded as a base64 data URL.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Sequence
from html import escape
from typing import Any, Final

from spikewatch.server.report._charts import chart_svgs
from spikewatch.server.report._data import Alert, RunData
from spikewatch.server.report._layout import (
    ALERTS_ID,
    PHASES,
    Layout,
    severity_color,
    value_text,
)
from spikewatch.server.report._style import STYLE

CHART_IDS: Final = ("chart-loss", "chart-stability", "chart-rho", "chart-alignment", ALERTS_ID)
"""Element ids of the charts, top to bottom."""

# A vertical cursor across every chart at the hovered step (no data needed: each svg's data-step-lo/
# -hi and data-plot-left/-right/-top/-bottom, fractions of its size, describe its step axis).
_SCRIPT: Final = """
(function(){var charts=document.querySelectorAll('svg.chart'),lab=document.getElementById(
'cursor-label'),NS='http://www.w3.org/2000/svg';charts.forEach(function(s){var l=
document.createElementNS(NS,'line'),b=s.viewBox.baseVal;l.setAttribute('class','cursor');
l.setAttribute('y1',b.height*s.dataset.plotTop);l.setAttribute('y2',b.height*s.dataset.plotBottom);
l.setAttribute('stroke','#333');l.setAttribute('visibility','hidden');s.appendChild(l);
s.addEventListener('mousemove',function(e){var r=s.getBoundingClientRect(),f=(e.clientX-r.left)/
r.width,L=+s.dataset.plotLeft,R=+s.dataset.plotRight,lo=+s.dataset.stepLo,hi=+s.dataset.stepHi;
if(f<L||f>R){return;}var step=Math.round(lo+(f-L)/(R-L)*(hi-lo));charts.forEach(function(t){
var c=t.querySelector('line.cursor'),x=f*t.viewBox.baseVal.width;c.setAttribute('x1',x);
c.setAttribute('x2',x);c.setAttribute('visibility','visible');});lab.textContent='step '+step;
lab.style.display='block';lab.style.left=(e.clientX+12)+'px';lab.style.top=(e.clientY-28)+'px';
});s.addEventListener('mouseleave',function(){lab.style.display='none';});});})();
"""


def _cell(x: Any) -> str:
    return value_text(x, 6) if isinstance(x, float) else escape(str(x))


def _time(t: Any) -> str:
    if not isinstance(t, int | float) or not math.isfinite(t):
        return "—"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _step(s: int | None) -> str:
    return "—" if s is None else str(s)


def _sev(s: str) -> str:
    return f'<span class="sev" style="background:{severity_color(s)}">{escape(s)}</span>'


def _meta_table(run: RunData) -> str:
    info = run.info
    rows = [("run", run.name), ("source", run.source),
            ("first seen", _time(info.get("created_at"))),
            ("last seen", _time(info.get("last_seen"))),
            ("last step", _step(info.get("last_step"))),
            ("world size", str(info.get("world_size", "—"))),
            ("active", "yes" if info.get("active") else "no")]  # fmt: skip
    head = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    meta = "".join(f'<tr class="meta-row"><th>{escape(str(k))}</th><td>{_cell(v)}</td></tr>'
                   for k, v in sorted(run.meta.items()))  # fmt: skip
    if not meta:
        meta = '<tr><td colspan="2" class="note">the agent sent no metadata</td></tr>'
    return (f'<table id="meta-table" class="meta"><tbody>{head}</tbody></table>'
            f'<h3>Agent metadata (hello)</h3><table id="hello-table" class="meta"><tbody>{meta}'
            "</tbody></table>")


def _lead(run: RunData, a: Alert) -> str:
    n = run.lead(a)
    if n is not None:
        nxt = a.fired_step + n if a.fired_step is not None else None
        return f"{n} steps (onset {nxt})"
    return "—"


def _alert_rows(run: RunData, alerts: list[Alert]) -> str:
    head = ("<tr><th>rule</th><th>severity</th><th>state</th><th>first step</th>"
            "<th>fired step</th><th>resolved step</th><th>lead before next onset</th>"
            "<th>value</th><th>summary</th></tr>")  # fmt: skip
    rows = "".join(
        f'<tr class="alert-row" data-rule="{escape(a.rule)}" data-severity="{escape(a.severity)}">'
        f"<td>{escape(a.rule)}</td><td>{_sev(a.severity)}</td><td>{escape(a.state)}</td>"
        f'<td class="num">{a.first_step}</td><td class="num">{_step(a.fired_step)}</td>'
        f'<td class="num">{_step(a.resolved_step)}</td><td class="num">{_lead(run, a)}</td>'
        f'<td class="num">{_cell(a.value)}</td><td>{escape(a.summary)}</td></tr>'
        for a in sorted(alerts, key=lambda a: (a.first_step, a.rule))
    )
    return f"<thead>{head}</thead><tbody>{rows}</tbody>"


def _alert_table(run: RunData) -> str:
    """Alerts that fired in a table; those that were only pending folded away below it."""
    if not run.alerts:
        return '<p id="alert-table" class="note">No alerts were raised for this run.</p>'
    fired = [a for a in run.alerts if a.fired_step is not None]
    pending = [a for a in run.alerts if a.fired_step is None]
    out = (f'<table id="alert-table">{_alert_rows(run, fired)}</table>' if fired else
           '<p id="alert-table" class="note">No alert fired (some were pending).</p>')
    if pending:
        out += (f'<details id="pending-alerts"><summary>{len(pending)} pending episode(s) that '
                f"cleared without firing</summary><table>{_alert_rows(run, pending)}</table>"
                "</details>")
    return out


MAX_GUARD_ROWS: Final = 200
"""Guard actions listed in the table (all of them are drawn on the loss chart)."""


def _guard_table(run: RunData) -> str:
    """The guard's actions, one row each (only for a run in which it acted)."""
    if not run.guards:
        return ""
    rows = "".join(
        f'<tr class="guard-row" data-start="{g.start}" data-end="{_step(g.end)}" '
        f'data-action="{escape(g.action)}"><td class="num">{g.start}</td>'
        f'<td class="num">{"still acting" if g.end is None else g.end}</td>'
        f"<td>{escape(g.action)}</td><td>{escape(g.why)}</td></tr>"
        for g in run.guards[:MAX_GUARD_ROWS])
    more = len(run.guards) - MAX_GUARD_ROWS
    note = f'<p class="note">(+{more} more on the loss chart)</p>' if more > 0 else ""
    return ("<h2>Guard actions</h2><table id=\"guard-table\"><thead><tr><th>from step</th>"
            "<th>released at step</th><th>action</th><th>why</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>{note}")


def _cards(run: RunData) -> str:
    onsets = run.onsets
    fired = [a for a in run.alerts if a.fired_step is not None]
    pages = [a for a in fired if a.severity == "page"]
    # per onset, the longest lead of any page rule, each from its latest firing (the backtest's)
    per_onset: dict[int, int] = {}
    for a, onset, n in run.credited_leads:
        if a.severity == "page":
            per_onset[onset] = max(n, per_onset.get(onset, 0))
    lo, hi = run.step_range
    cards = [("steps", f"{lo}–{hi}", False),
             ("loss spike onsets", str(len(onsets)), bool(onsets)),
             ("alerts fired", str(len(fired)), False),
             ("pages", str(len(pages)), bool(pages)),
             ("onsets paged ahead", f"{len(per_onset)}/{len(onsets)}", bool(onsets) and
              len(per_onset) < len(onsets)),
             ("page lead (steps, per onset)",
              ", ".join(str(per_onset[o]) for o in onsets if o in per_onset) or "—", False)]
    if run.guards:
        cards.append(("guard actions", str(len(run.guards)), False))
    return '<div class="cards">' + "".join(
        f'<div class="card{" bad" if bad else ""}"><b>{escape(v)}</b><span>{escape(k)}</span></div>'
        for k, v, bad in cards) + "</div>"


def _phase_legend(lay: Layout) -> str:
    if not lay.bands:
        return '<p class="note">No phase series in this run: phases are not shaded.</p>'
    return '<p class="phases">Background: five-phase label — ' + "".join(
        f'<span><i style="background:{c}"></i>{escape(label)}</span>'
        for label, c in PHASES.values()) + "</p>"


def render_html(lay: Layout, png: bytes | None, generated: float, *,
                title: str | None = None, nav: Sequence[tuple[str, str]] = (),
                notes: Sequence[str] = ()) -> str:  # fmt: skip
    """The whole page as a string (UTF-8). `png` None: no image section (the run page); `title`
    (default: the postmortem's); `nav`: (text, href) links under it; `notes`: sentences after the
    generation line."""
    run = lay.run
    figures = "".join(f"<figure>{svg}</figure>" for svg in chart_svgs(lay))
    onsets = run.onsets
    onset_txt = (f"Loss spike onsets (loss &gt; 2× its minimum over the previous 50 steps): "
                 f"{', '.join(map(str, onsets))}." if onsets else "No loss spike onset.")
    title = title or f"spikewatch postmortem — run {run.name}"
    links = "".join(f'<a href="{escape(href)}">{escape(text)}</a>' for text, href in nav)
    extra = "".join(f" {escape(n)}" for n in notes)
    image = ("" if png is None else
             f'<h2>Image</h2><img id="report-png" alt="{escape(title)} (PNG)" '
             f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="spikewatch report">
<title>{escape(title)}</title><style>{STYLE}</style></head>
<body><main>
{f"<nav>{links}</nav>" if links else ""}<h1>{escape(title)}</h1>
<p class="sub">Generated {_time(generated)} from {escape(run.source)}.{extra} {onset_txt}</p>
{_cards(run)}
<h2>Signals</h2>{_phase_legend(lay)}
<div id="charts">{figures}</div>
<h2>Alerts</h2>{_alert_table(run)}
{_guard_table(run)}
<h2>Run</h2>{_meta_table(run)}
{image}
</main><div id="cursor-label"></div><script>{_SCRIPT}</script></body></html>
"""
