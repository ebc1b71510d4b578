"""The self-contained HTML page: summary, run metadata, alert table, SVG charts and the PNG.

Nothing is loaded from elsewhere: styles and the small cursor script are inline, the charts are
matplotlib's SVG inline (`_charts`), and the PNG is embedded as a base64 data URL.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
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

CHART_IDS: Final = ("chart-loss", "chart-stability", "chart-rho", "chart-alignment", ALERTS_ID)
"""Element ids of the charts, top to bottom."""

_STYLE: Final = """
body{margin:0;background:#f4f5f7;color:#1d1d1f;
 font:14px/1.45 system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:18px 20px 40px}
h1{font-size:24px;margin:4px 0 2px}h2{font-size:17px;margin:26px 0 8px}
.sub{color:#555;margin:0 0 12px}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #dcdfe4;border-radius:8px;padding:8px 14px;min-width:130px}
.card b{display:block;font-size:20px}.card span{color:#555;font-size:12px}
.card.bad b{color:#c62828}
table{border-collapse:collapse;background:#fff;border:1px solid #dcdfe4;width:100%}
th,td{padding:5px 10px;border-bottom:1px solid #eceef1;text-align:left;vertical-align:top}
th{background:#f0f1f4;font-weight:600;font-size:13px}td.num{text-align:right;
 font-variant-numeric:tabular-nums}
table.meta{width:auto;min-width:50%}table.meta th{width:180px}
.sev{display:inline-block;padding:0 8px;border-radius:10px;color:#fff;font-size:12px;
 font-weight:600}
figure{margin:0 0 10px;background:#fff;border:1px solid #dcdfe4;border-radius:8px;
 padding:4px 6px;overflow-x:auto}
svg.chart{display:block;width:100%;height:auto}
.phases span{display:inline-block;margin-right:12px}
.phases i{display:inline-block;width:14px;height:12px;border:1px solid #aaa;margin-right:4px;
 vertical-align:-1px}
.note{color:#555;font-style:italic}
details{margin:8px 0}summary{cursor:pointer;color:#333}
#cursor-label{position:fixed;display:none;background:#222;color:#fff;padding:2px 7px;
 border-radius:4px;font-size:12px;pointer-events:none}
img#report-png{max-width:100%;border:1px solid #dcdfe4;background:#fff}
"""

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
    return '<div class="cards">' + "".join(
        f'<div class="card{" bad" if bad else ""}"><b>{escape(v)}</b><span>{escape(k)}</span></div>'
        for k, v, bad in cards) + "</div>"


def _phase_legend(lay: Layout) -> str:
    if not lay.bands:
        return '<p class="note">No phase series in this run: phases are not shaded.</p>'
    return '<p class="phases">Background: five-phase label — ' + "".join(
        f'<span><i style="background:{c}"></i>{escape(label)}</span>'
        for label, c in PHASES.values()) + "</p>"


def render_html(lay: Layout, png: bytes, generated: float) -> str:
    """The whole page as a string (UTF-8)."""
    run = lay.run
    figures = "".join(f"<figure>{svg}</figure>" for svg in chart_svgs(lay))
    onsets = run.onsets
    onset_txt = (f"Loss spike onsets (loss &gt; 2× its minimum over the previous 50 steps): "
                 f"{', '.join(map(str, onsets))}." if onsets else "No loss spike onset.")
    png64 = base64.b64encode(png).decode("ascii")
    title = f"spikewatch postmortem — run {run.name}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="spikewatch report">
<title>{escape(title)}</title><style>{_STYLE}</style></head>
<body><main>
<h1>{escape(title)}</h1>
<p class="sub">Generated {_time(generated)} from {escape(run.source)}. {onset_txt}</p>
{_cards(run)}
<h2>Signals</h2>{_phase_legend(lay)}
<div id="charts">{figures}</div>
<h2>Alerts</h2>{_alert_table(run)}
<h2>Run</h2>{_meta_table(run)}
<h2>Image</h2>
<img id="report-png" alt="{escape(title)} (PNG)" src="data:image/png;base64,{png64}">
</main><div id="cursor-label"></div><script>{_SCRIPT}</script></body></html>
"""
