"""`spikewatch runs` and `spikewatch alerts`: tables (rich) or JSON from a server or a database.

Both read through the HTTP API (``--url``, a bearer token from ``--token`` when the server requires
one) or open the database directly (``--db``); `server._cli_options` names and resolves these.
``--json`` prints what the API answers (non-finite floats as "NaN", "Infinity", "-Infinity").
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError
from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from spikewatch.server._cli_options import TOKEN_ENV, add_source_options
from spikewatch.server.api._convert import alert_out, run_out
from spikewatch.server.api._schemas import AlertOut, RunOut
from spikewatch.server.types import AlertState

RUNS_JSON: Final = TypeAdapter(list[RunOut])
_ALERTS: Final = TypeAdapter(list[AlertOut])
STATE_STYLE: Final = {AlertState.FIRING.value: "bold red", AlertState.PENDING.value: "yellow",
                      AlertState.RESOLVED.value: "green"}
T = TypeVar("T")

if TYPE_CHECKING:
    from spikewatch.server.store import Store


class SourceError(RuntimeError):
    """The server or database could not be read; the message says why. `status`: the HTTP
    status the server answered, if it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# --- formatting -----------------------------------------------------------------------------------


def fmt_value(x: float | None) -> str:
    """A float for a table: 4 significant digits, nan/inf/-inf spelled out, '-' for none."""
    if x is None:
        return "-"
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.4g}"


def fmt_int(x: int | None) -> str:
    return "-" if x is None else str(x)


def fmt_time(t: float | None, now: float) -> str:
    """UTC wall time and how long ago, e.g. '2026-01-02 03:04:05 (3m ago)'."""
    if t is None or not math.isfinite(t):
        return "-"
    stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")
    age = max(0.0, now - t)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= size:
            return f"{stamp} ({int(age // size)}{unit} ago)"
    return f"{stamp} ({int(age)}s ago)"


def table(header: Sequence[str], rows: Sequence[Sequence[str | Text]],
          right: frozenset[int] = frozenset()) -> Table:
    """A header, a rule and the rows; columns in `right` are right-aligned. Cells are plain text
    (a run or rule name is never read as rich markup)."""
    out = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for i, name in enumerate(header):
        out.add_column(name, justify="right" if i in right else "left")
    for row in rows:
        out.add_row(*(c if isinstance(c, Text) else Text(c) for c in row))
    return out


def runs_table(runs: Sequence[RunOut], now: float) -> Table:
    """The `spikewatch runs` table."""
    rows = [[r.name, fmt_int(r.last_step), fmt_time(r.last_seen, now), str(r.world_size),
             "yes" if r.active else "no", str(r.firing_alerts)] for r in runs]
    return table(["RUN", "LAST STEP", "LAST SEEN (UTC)", "WORLD", "ACTIVE", "FIRING"], rows,
                 right=frozenset({1, 3, 5}))


def alerts_table(alerts: Sequence[AlertOut]) -> Table:
    """The `spikewatch alerts` table (the state coloured on a terminal)."""
    rows: list[list[str | Text]] = [
        [a.run, a.rule, a.severity, Text(a.state, STATE_STYLE.get(a.state, "")),
         str(a.first_step), fmt_int(a.fired_step), fmt_int(a.resolved_step),
         fmt_value(a.value)] for a in alerts]
    return table(["RUN", "RULE", "SEVERITY", "STATE", "FIRST", "FIRED", "RESOLVED", "VALUE"],
                 rows, right=frozenset({4, 5, 6, 7}))


def show(renderable: RenderableType, console: Console | None = None) -> None:
    """Print to stdout; into a pipe or file a table is never wrapped or cut to fit 80 columns."""
    console = console or Console(highlight=False)
    if not console.is_terminal:
        console.width = 100_000  # a table is as wide as its cells, not padded to the console
    console.print(renderable)


# --- sources --------------------------------------------------------------------------------------


def http_call(args: argparse.Namespace, path: str, params: dict[str, str] | None = None,
              method: str = "GET") -> Any:
    """`method` `path` on ``args.url`` with ``args.token`` and ``args.timeout``; the JSON answer
    (None for 204). `SourceError` with the reason on any failure."""
    url, headers = args.url, {}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    try:
        resp = httpx.request(method, url.rstrip("/") + path, params=params or {},
                             headers=headers, timeout=args.timeout)
    except httpx.HTTPError as e:
        raise SourceError(f"cannot reach {url}: {type(e).__name__}: {e}") from None
    if resp.status_code == 401:
        raise SourceError(f"{url} requires a bearer token: set ${TOKEN_ENV} or give --token", 401)
    if resp.status_code == 204:
        return None
    if resp.status_code != 200:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text[:200]
        raise SourceError(f"{url}{path}: HTTP {resp.status_code}: {detail}", resp.status_code)
    try:
        return resp.json()
    except ValueError:
        raise SourceError(f"{url}{path} did not answer JSON") from None


def fetch_runs(args: argparse.Namespace) -> list[RunOut]:
    """Runs, most recently seen first, from --db or --url."""
    if args.db:
        with open_store(args.db) as store:
            firing = Counter(a.run for a in store.alerts(state=AlertState.FIRING.value))
            rows = sorted(store.list_runs(), key=lambda r: (-r.last_seen, r.name))
            return [run_out(r, firing[r.name]) for r in rows]
    return validated(RUNS_JSON, http_call(args, "/api/v1/runs"))


def fetch_alerts(args: argparse.Namespace) -> list[AlertOut]:
    """Alert episodes, optionally of one run and/or state, from --db or --url."""
    state = args.state
    if args.db:
        with open_store(args.db) as store:
            if args.run and store.get_run(args.run) is None:
                raise SourceError(f"unknown run {args.run!r}")
            return [alert_out(a) for a in store.alerts(args.run, state=state)]
    params = {"state": state} if state else {}
    path = f"/api/v1/runs/{quote(args.run, safe='')}/alerts" if args.run else "/api/v1/alerts"
    return validated(_ALERTS, http_call(args, path, params))


def validated(adapter: TypeAdapter[T], data: Any) -> T:
    try:
        return adapter.validate_python(data)
    except ValidationError as e:
        raise SourceError(f"unexpected answer from the server: {e.error_count()} errors") from None


@contextmanager
def open_store(url: str) -> Iterator[Store]:
    """Open an existing database: a missing SQLite file is an error, never created."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from spikewatch.server.store import Store as SqlStore  # only --db needs SQLAlchemy

    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise SourceError(f"bad database URL: {e}") from None
    db = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and db not in ("", ":memory:") \
            and not Path(db).is_file():
        raise SourceError(f"no database at {db}")
    try:
        store = SqlStore(url)
    except Exception as e:  # any driver/URL error becomes a clear message
        raise SourceError(f"cannot open database: {type(e).__name__}: {e}") from None
    try:
        yield store
    except SQLAlchemyError as e:
        raise SourceError(f"cannot read database (is it migrated? `spikewatch db upgrade`): "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    finally:
        store.close()


# --- commands -------------------------------------------------------------------------------------


def printed(fetch: Callable[[argparse.Namespace], T], to_json: Callable[[T], str],
            render: Callable[[T, argparse.Namespace], RenderableType],
            ) -> Callable[[argparse.Namespace], int]:
    """A command that fetches once and prints JSON (``--json``) or a rendering; exit status 1
    with the reason when the source cannot be read."""
    def command(args: argparse.Namespace) -> int:
        try:
            item = fetch(args)
        except SourceError as e:
            print(f"spikewatch: {e}", file=sys.stderr)
            return 1
        if args.json:
            print(to_json(item))
        else:
            show(render(item, args))
        return 0

    return command


def _listing(fetch: Callable[[argparse.Namespace], list[T]], adapter: TypeAdapter[list[T]],
             to_table: Callable[[list[T]], Table], empty: str,
             ) -> Callable[[argparse.Namespace], int]:
    return printed(fetch, lambda items: adapter.dump_json(items, indent=2).decode(),
                   lambda items, _: to_table(items) if items else empty)


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print JSON as the HTTP API answers it instead of a table")
    p.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds")


def register(subparsers: Any) -> None:
    """Add the `runs` and `alerts` subcommands (each sets `func(args) -> exit code`)."""
    p = subparsers.add_parser("runs", help="list runs as a table or JSON",
                              description="Runs: last step, last seen, world size, firing alerts.")
    _common_options(p)
    add_source_options(p, _listing(fetch_runs, RUNS_JSON,
                                   lambda runs: runs_table(runs, time.time()),
                                   "no runs"), default="url")
    p = subparsers.add_parser("alerts", help="list alerts as a table or JSON",
                              description="Alert episodes: rule, severity, state, steps, value.")
    _common_options(p)
    p.add_argument("--run", help="only this run")
    p.add_argument("--state", choices=[s.value for s in AlertState], help="only this state")
    add_source_options(p, _listing(fetch_alerts, _ALERTS, alerts_table, "no alerts"),
                       default="url")
