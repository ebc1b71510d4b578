"""A run as the report needs it, read from a `Store` or from a server's HTTP API.

Values may be NaN or ±Inf: they are kept (the charts mark them), never dropped. Loss spike onsets
use the backtest's definition (`server.backtest.spike_onsets`), and an alert's lead before the next
onset uses `server.backtest.lead`, so the report and the backtest agree. The guard's actions come
from its stored events (`_guards`). A store read may be limited to a window of steps (the run
page's bound on a huge run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, TypeVar
from urllib.parse import quote

import httpx

from spikewatch.protocol import names as nm
from spikewatch.protocol.nonfinite import from_json
from spikewatch.server.backtest import Episode, lead, spike_onsets
from spikewatch.server.report._guards import GUARD_EVENTS, GuardSpan, guard_spans, in_window
from spikewatch.server.store.reads import StoreReads
from spikewatch.server.store.rows import AlertRow
from spikewatch.server.types import Severity

Points = list[tuple[int, float]]
Window = tuple[int, int]
"""First and last step of a window (both included)."""

SERIES: tuple[str, ...] = (
    nm.LOSS, nm.STABILITY_RATIO_TWO_SECANT, nm.STABILITY_RATIO, nm.STABILITY_RATIO_SECANT,
    nm.STABILITY_RATIO_MAX, nm.RHO, nm.RHO_SAMPLED, nm.SQRT_V_DECAY, nm.SA_SIGN_DIVERSITY,
    nm.GRAD_SPIKE_SHARE, nm.PHASE,
)
"""The metrics the report draws (each is optional)."""

PAGE = 10_000
"""Points fetched per request/query."""
EVENT_PAGE = 1000
"""Events fetched per request/query (the API's most)."""


class ReportError(Exception):
    """The run cannot be read (unknown run, unreachable server, bad database); a clear message."""


Alert = AlertRow
"""One alert episode (`fired_step` None: it never fired; `resolved_step` None: not resolved)."""


@dataclass(frozen=True)
class RunData:
    """Everything a report shows: metadata, the series by metric name, the alert episodes."""

    name: str
    info: dict[str, Any]  # created_at, last_seen, last_step, world_size, active
    meta: dict[str, Any]  # the agent's hello metadata
    series: dict[str, Points]  # only metrics the run has (see `missing`)
    alerts: list[Alert]
    source: str
    missing: list[str] = field(default_factory=list)
    guards: list[GuardSpan] = field(default_factory=list)
    window: Window | None = None  # read only these steps (None: the whole run)

    @cached_property
    def onsets(self) -> list[int]:
        """Loss spike onsets (backtest definition); none without a loss series."""
        return spike_onsets(self.series.get(nm.LOSS, []))

    @cached_property
    def step_range(self) -> tuple[int, int]:
        """(first, last) step over every series and alert, inside `window` if there is one;
        (0, 1) for an empty run."""
        steps = [s for pts in self.series.values() for s in (pts[0][0], pts[-1][0]) if pts]
        for a in self.alerts:
            steps += [x for x in (a.first_step, a.fired_step, a.resolved_step) if x is not None]
        if not steps:
            return self.window if self.window and self.window[1] > self.window[0] else (0, 1)
        lo, hi = min(steps), max(steps)
        if self.window is not None:
            lo, hi = max(lo, self.window[0]), min(hi, self.window[1])
        return (lo, hi) if hi > lo else (lo, lo + 1)

    @cached_property
    def credited_leads(self) -> list[tuple[Alert, int, int]]:
        """(alert, onset, lead in steps) per onset and rule, for the alert the backtest credits:
        the rule's latest firing that leads the onset."""
        onsets = self.onsets
        out: list[tuple[Alert, int, int]] = []
        for rule in dict.fromkeys(a.rule for a in self.alerts):
            fired = {a.fired_step: a for a in self.alerts
                     if a.rule == rule and a.fired_step is not None}  # fmt: skip
            eps = [Episode(a.rule, _severity(a.severity), a.first_step, step, a.resolved_step,
                           a.value) for step, a in fired.items()]  # fmt: skip
            for k, onset in enumerate(onsets):
                n = lead(eps, onset, onsets[k - 1] if k else None)
                if n is not None:
                    out.append((fired[onset - n], onset, n))
        return out

    def lead(self, alert: Alert) -> int | None:
        """Steps from the alert's firing to the next loss spike onset it leads (None: none)."""
        if alert.fired_step is None:
            return None
        onsets = self.onsets
        for k, onset in enumerate(onsets):
            if onset > alert.fired_step:
                ep = Episode(alert.rule, _severity(alert.severity), alert.first_step,
                             alert.fired_step, alert.resolved_step, alert.value)
                return lead([ep], onset, onsets[k - 1] if k else None)
        return None


def _severity(s: str) -> Severity:
    try:
        return Severity(s)
    except ValueError:
        return Severity.INFO


def _dedup(points: Iterable[tuple[int, float]]) -> Points:
    """Step order, one value per step (the last one read)."""
    by_step: dict[int, float] = {}
    for s, v in points:
        by_step[int(s)] = float(v)
    return sorted(by_step.items())


# --- from a Store ------------------------------------------------------------------------------


_INFO: Final = ("created_at", "last_seen", "last_step", "world_size", "active")
"""The run's fields the report shows (a store row's attributes, the API's keys)."""

Page = Callable[[str, int | None], tuple[Points, bool]]
"""Reads one page of a metric from a step on: its points, and whether more may follow."""
GuardEvent = tuple[int, str, Mapping[str, Any]]
"""(step, type, data) of a guard event."""
EventPage = Callable[[str, int | None], tuple[list[GuardEvent], bool]]
"""Reads one page of an event type from a step on, like `Page`."""
T = TypeVar("T", tuple[int, float], GuardEvent)


def _paged(page: Callable[[str, int | None], tuple[list[T], bool]], name: str,
           step_min: int | None) -> list[T]:  # fmt: skip
    """Every row of `name` from `step_min` on, read page by page."""
    rows: list[T] = []
    while True:
        chunk, more = page(name, step_min)
        rows += chunk
        if not more or not chunk:
            return rows
        step_min = chunk[-1][0] + 1


def _read_series(have: Iterable[str], page: Page, step_min: int | None = None
                 ) -> dict[str, Points]:  # fmt: skip
    """Every metric of `SERIES` the run has, read page by page."""
    have = set(have)
    series: dict[str, Points] = {}
    for metric in SERIES:
        if metric in have and (pts := _paged(page, metric, step_min)):
            series[metric] = _dedup(pts)
    return series


def _read_guards(page: EventPage) -> list[GuardSpan]:
    """The guard's actions, from all its events (a few per run: it acts at most once per hold)."""
    events = [e for kind in GUARD_EVENTS for e in _paged(page, kind, None)]
    return guard_spans(sorted(events, key=lambda e: e[0]))


def from_store(store: StoreReads, run: str, *, source: str = "store",
               window: Window | None = None) -> RunData:  # fmt: skip
    """Read `run` from a store, only the steps of `window` if given (and the alerts and guard
    actions that overlap it); `ReportError` when it does not exist."""
    row = store.get_run(run)
    if row is None:
        raise ReportError(f"no run named {run!r} in {source}")
    lo, hi = window if window is not None else (None, None)

    def page(metric: str, step_min: int | None) -> tuple[Points, bool]:
        chunk = store.series(run, metric, step_min=step_min, step_max=hi, limit=PAGE)
        return [(p.step, p.value) for p in chunk], len(chunk) == PAGE

    def events(kind: str, step_min: int | None) -> tuple[list[GuardEvent], bool]:
        chunk = store.events(run, type=kind, step_min=step_min, limit=EVENT_PAGE)
        return [(e.step, e.type, e.data) for e in chunk], len(chunk) == EVENT_PAGE

    series = _read_series(store.metrics(run), page, lo)
    guards = _read_guards(events)  # all of them: an action begun before the window holds on
    alerts = store.alerts(run)
    if window is not None:
        guards = in_window(guards, *window)
        alerts = [a for a in alerts if a.first_step <= window[1]
                  and (a.resolved_step is None or a.resolved_step >= window[0])]  # fmt: skip
    info = {k: getattr(row, k) for k in _INFO}
    return RunData(run, info, dict(row.meta), series, alerts, source,
                   [m for m in SERIES if m not in series], guards, window)


# --- from the HTTP API -------------------------------------------------------------------------

def _float(x: Any) -> float:
    if isinstance(x, str) and (value := from_json(x)) is not None:
        return value
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ReportError(f"the server sent a non-number value: {str(x)[:40]!r}")
    return float(x)


def _alert(a: Any) -> Alert:
    """An alert episode as the API sends it (`AlertOut`)."""
    def when(x: Any) -> float | None:
        return None if x is None else _float(x)

    try:
        return AlertRow(run=str(a["run"]), rule=str(a["rule"]), severity=str(a["severity"]),
                        state=str(a["state"]), first_step=int(a["first_step"]),
                        fired_step=a["fired_step"], resolved_step=a["resolved_step"],
                        value=_float(a["value"]), started_at=_float(a["started_at"]),
                        fired_at=when(a["fired_at"]), resolved_at=when(a["resolved_at"]),
                        labels=dict(a["labels"]), annotations=dict(a["annotations"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ReportError(f"the server sent a malformed alert: {type(e).__name__}: {e}") from None


def _get(client: httpx.Client, path: str, params: Mapping[str, Any] | None = None, *,
         not_found: str | None = None) -> Any:
    """GET a JSON document; `ReportError` on any failure (`not_found`: the 404/422 message)."""
    try:
        r = client.get(path, params=params)
    except httpx.HTTPError as e:
        raise ReportError(f"cannot reach {client.base_url}: {type(e).__name__}: {e}") from None
    if not_found is not None and r.status_code in (404, 422):
        raise ReportError(not_found)
    if r.status_code in (401, 403):
        raise ReportError(f"{client.base_url} refused the request ({r.status_code}): "
                          "give a read token with --token or $SPIKEWATCH_API_TOKEN")  # fmt: skip
    if r.status_code != 200:
        raise ReportError(f"GET {path} answered {r.status_code}: {r.text[:200]}")
    try:
        return r.json()
    except ValueError:
        raise ReportError(f"GET {path} did not answer JSON") from None


def from_api(client: httpx.Client, run: str) -> RunData:
    """Read `run` through a server's /api/v1 (the client's base_url is the server)."""
    base = f"/api/v1/runs/{quote(run, safe='')}"
    body = _get(client, base, not_found=f"no run named {run!r} on {client.base_url}")

    def page(metric: str, step_min: int | None) -> tuple[Points, bool]:
        params: dict[str, Any] = {"metric": metric, "limit": PAGE}
        if step_min is not None:
            params["step_min"] = step_min
        doc = _get(client, f"{base}/series", params)
        return ([(int(p["step"]), _float(p["value"])) for p in doc["points"]],
                bool(doc.get("truncated")))

    def events(kind: str, step_min: int | None) -> tuple[list[GuardEvent], bool]:
        params: dict[str, Any] = {"type": kind, "limit": EVENT_PAGE}
        if step_min is not None:
            params["step_min"] = step_min
        doc = _get(client, f"{base}/events", params)
        return [(int(e["step"]), str(e["type"]), dict(e["data"])) for e in doc], \
            len(doc) == EVENT_PAGE

    series = _read_series((m["name"] for m in _get(client, f"{base}/metrics")), page)
    alerts = [_alert(a) for a in _get(client, f"{base}/alerts")]
    info = {k: body.get(k) for k in _INFO}
    return RunData(run, info, dict(body.get("meta") or {}), series, alerts,
                   str(client.base_url), [m for m in SERIES if m not in series],
                   _read_guards(events))
