"""The HTML pages: GET /runs (every run, linking to its page) and GET /runs/{run} (the run page:
loss with spike onsets and guard actions, stability ratios, ρ, sign diversity, alerts, on the step
axis; the report's charts, drawn from the store on request).

Both are plain `def` routes, so FastAPI runs them in its thread pool, never on the event loop; at
most `MAX_DRAWING` pages are drawn at once, and a request that waits `DRAW_WAIT_S` for its turn is
answered 503. Without matplotlib (extra ``report``) a run page is a 503 saying so; the index and
the rest of the server work without it. Read auth: `_page_auth`.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from spikewatch.server.api._deps import context
from spikewatch.server.api._page_auth import html_page, message_page, page_access
from spikewatch.server.api._params import RunName, StepMax, StepMin, check_range
from spikewatch.server.report._data import ReportError
from spikewatch.server.report._index import render_index
from spikewatch.server.report._page import INDEX_PATH, drawing_unavailable, render_page
from spikewatch.server.types import AlertState

MAX_DRAWING: Final = 2
DRAW_WAIT_S: Final = 60.0
_drawing = threading.BoundedSemaphore(MAX_DRAWING)

router = APIRouter(tags=["pages"], default_response_class=HTMLResponse, include_in_schema=False)
"""Pages, not API: left out of the OpenAPI schema (docs/run-page.md describes them)."""


@router.get(INDEX_PATH, response_class=HTMLResponse)
def runs_index(request: Request) -> Response:
    """Every run, most recently seen first, each linking to its run page (HTML)."""
    if (other := page_access(request)) is not None:
        return other
    store = context(request).store
    firing = Counter(a.run for a in store.alerts(state=AlertState.FIRING.value))
    rows = sorted(store.list_runs(), key=lambda r: (-r.last_seen, r.name))
    return html_page(render_index(rows, firing))


@router.get(INDEX_PATH + "/{run}", response_class=HTMLResponse)
def run_page(request: Request, run: RunName, step_min: StepMin = None,
             step_max: StepMax = None) -> Response:  # fmt: skip
    """The run page (HTML): the run's signals, alerts and guard actions on the step axis, at most
    50,000 steps (the latest unless step_min/step_max pick others). 401/403 without a read token
    (when the server has tokens), 404 for an unknown run, 503 without matplotlib or when busy."""
    if (other := page_access(request)) is not None:
        return other
    check_range(step_min, step_max)
    if (why := drawing_unavailable()) is not None:
        return message_page(503, "The run page is not available", why)
    store = context(request).store
    if store.get_run(run) is None:
        return message_page(404, "Unknown run", f"This server has no run named {run!r}.")
    if not _drawing.acquire(timeout=DRAW_WAIT_S):
        return message_page(503, "Busy", "Other run pages are being drawn; try again shortly.",
                            {"Retry-After": "10"})  # fmt: skip
    try:
        return html_page(render_page(store, run, step_min=step_min, step_max=step_max))
    except ReportError as e:  # the run went away while it was read
        return message_page(404, "Unknown run", str(e))
    finally:
        _drawing.release()
