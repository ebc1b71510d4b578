"""The server's run index: one row per run, each linking to its run page."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from html import escape

from spikewatch.server.report._page import page_path
from spikewatch.server.report._style import STYLE
from spikewatch.server.store.rows import RunRow


def _time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_index(runs: Sequence[RunRow], firing: Mapping[str, int]) -> str:
    """The index page: `runs` (most recently seen first) with their last step, when they were
    last seen, whether they are active and how many alerts fire."""
    rows = "".join(
        f'<tr class="run-row" data-run="{escape(r.name)}">'
        f'<td><a href="{escape(page_path(r.name))}">{escape(r.name)}</a></td>'
        f'<td class="num">{"—" if r.last_step is None else r.last_step}</td>'
        f"<td>{_time(r.last_seen)}</td><td>{'yes' if r.active else 'no'}</td>"
        f'<td class="num">{firing.get(r.name, 0)}</td></tr>'
        for r in runs)
    table = (f'<table id="runs"><thead><tr><th>run</th><th>last step</th><th>last seen</th>'
             f"<th>active</th><th>alerts firing</th></tr></thead><tbody>{rows}</tbody></table>"
             if runs else '<p id="runs" class="note">No run has sent data yet.</p>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>spikewatch — runs</title><style>{STYLE}</style></head>
<body><main><h1>spikewatch — runs</h1>
<p class="sub">{len(runs)} run(s), most recently seen first. Each links to its run page.</p>
{table}
</main></body></html>
"""
