"""The server's run page: the report's HTML (charts, alert and guard tables, metadata) drawn from
the daemon's store on request, without the PNG, for a window of steps.

A page draws at most `MAX_PAGE_STEPS` steps (by default the run's latest), so a huge run costs
what a run of that length costs: reading is bounded by the window and drawing by the pixel columns.
"""

from __future__ import annotations

import importlib
import time
from typing import Final

from spikewatch.server.report._data import ReportError, Window, from_store
from spikewatch.server.store.reads import StoreReads

MAX_PAGE_STEPS: Final = 50_000
"""Steps one run page draws at most."""
INDEX_PATH: Final = "/runs"
"""The run index; a run's page is INDEX_PATH/NAME."""


def page_path(run: str) -> str:
    """The path of a run's page on the server (run names need no escaping in a path)."""
    return f"{INDEX_PATH}/{run}"


def page_window(last_step: int | None, step_min: int | None, step_max: int | None,
                max_steps: int = MAX_PAGE_STEPS) -> tuple[Window, bool]:  # fmt: skip
    """The steps a page draws: [step_min, step_max], by default the run's latest `max_steps`
    steps up to its last step; and whether it was cut to `max_steps` steps."""
    hi = step_max if step_max is not None else max(last_step or 0, 0)
    lo = step_min if step_min is not None else max(hi - max_steps + 1, 0)
    lo = min(lo, hi)
    if hi - lo + 1 > max_steps:
        return (hi - max_steps + 1, hi), True
    return (lo, hi), step_min is None and lo > 0


def drawing_unavailable() -> str | None:
    """Why run pages cannot be drawn here (matplotlib is missing), or None when they can."""
    try:
        importlib.import_module("spikewatch.server.report._draw")
    except ReportError as e:
        return str(e)
    return None


def render_page(store: StoreReads, run: str, *, step_min: int | None = None,
                step_max: int | None = None, max_steps: int = MAX_PAGE_STEPS) -> str:
    """The run page of `run` as HTML; `ReportError` when the run does not exist or matplotlib
    is not installed (checked first, before anything is read)."""
    importlib.import_module("spikewatch.server.report._draw")  # no matplotlib: ReportError
    from spikewatch.server.report._html import render_html
    from spikewatch.server.report._layout import layout

    row = store.get_run(run)
    if row is None:
        raise ReportError(f"no run named {run!r}")
    window, cut = page_window(row.last_step, step_min, step_max, max_steps)
    data = from_store(store, run, source="this server", window=window)
    here = page_path(run)
    nav = [("All runs", INDEX_PATH)]
    notes = []
    chosen = step_min is not None or step_max is not None
    if cut or chosen:
        lo, hi = window
        notes.append(f"Steps {lo}–{hi} (a page draws at most {max_steps:,} steps; "
                     "?step_min=&step_max= pick others).")  # fmt: skip
        if lo > 0:
            nav.append(("Earlier steps", f"{here}?step_max={lo - 1}"))
        if row.last_step is not None and hi < row.last_step:
            nav.append(("Later steps", f"{here}?step_min={hi + 1}"))
        if chosen:
            nav.append(("Latest steps", here))
    return render_html(layout(data), None, time.time(), title=f"spikewatch — run {run}", nav=nav,
                       notes=notes)
