"""`spikewatch tail RUN`: a live table of a run's latest key signals and its open alerts.

Read every ``--interval`` seconds from a server (``--url``, every request with ``--timeout``) or a
database (``--db``) until Ctrl-C; a source that cannot be read is shown as such and tried again,
the last good reading kept on screen. ``--once`` prints one reading and exits (1 when it cannot be
read), ``--json`` with it prints that reading as JSON (non-finite floats as "NaN", "Infinity").
The latest values are the store's (`Store.latest`), directly or through the API's metric list.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, TypeAdapter
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from spikewatch.protocol import names as nm
from spikewatch.protocol.wire import RUN_RE
from spikewatch.server._cli_options import add_source_options
from spikewatch.server._cli_tables import (
    SourceError,
    alerts_table,
    fmt_int,
    fmt_time,
    fmt_value,
    http_call,
    open_store,
    printed,
    show,
    table,
    validated,
)
from spikewatch.server.api._convert import alert_out, run_out
from spikewatch.server.api._json import JsonFloat
from spikewatch.server.api._schemas import AlertOut, MetricOut, RunOut
from spikewatch.server.types import AlertState

SIGNALS: Final = {
    nm.LOSS: "loss",
    nm.STABILITY_RATIO_TWO_SECANT: "stability ratio (two-secant)",
    nm.RHO_SAMPLED: "ρ (sampled)",
    nm.SA_SIGN_DIVERSITY: "sign diversity",
    nm.GRAD_NORM: "grad norm",
    nm.AGENT_OVERHEAD: "agent overhead",
    nm.GUARD_ACTIVE: "guard active",
}
"""The key signals shown, by metric name, with their labels."""

OPEN: Final = (AlertState.FIRING.value, AlertState.PENDING.value)


class Reading(BaseModel):
    """One reading of a run: its row, the latest value of each key signal (None: not recorded),
    its open alerts (firing first), and when it was taken."""

    model_config = ConfigDict(frozen=True)

    run: RunOut
    signals: dict[str, JsonFloat | None]
    alerts: list[AlertOut]
    time: JsonFloat


_RUN: Final = TypeAdapter(RunOut)
_METRICS: Final = TypeAdapter(list[MetricOut])
_ALERTS: Final = TypeAdapter(list[AlertOut])


def _from_db(args: argparse.Namespace) -> Reading:
    with open_store(args.db) as store:
        row = store.get_run(args.run)
        if row is None:
            raise SourceError(f"no run named {args.run!r}", 404)
        latest = store.latest(args.run)
        alerts = [alert_out(a) for state in OPEN for a in store.alerts(args.run, state=state)]
    firing = sum(a.state == AlertState.FIRING.value for a in alerts)
    return Reading(run=run_out(row, firing), signals={m: latest.get(m) for m in SIGNALS},
                   alerts=alerts, time=time.time())


def _from_api(args: argparse.Namespace) -> Reading:
    base = f"/api/v1/runs/{quote(args.run, safe='')}"
    try:
        run = validated(_RUN, http_call(args, base))
    except SourceError as e:
        if e.status == 404:
            raise SourceError(f"no run named {args.run!r} on {args.url}", 404) from None
        raise
    latest = {m.name: m.latest for m in validated(_METRICS, http_call(args, f"{base}/metrics"))}
    signals = {m: latest.get(m) for m in SIGNALS}
    alerts = [a for state in OPEN
              for a in validated(_ALERTS, http_call(args, f"{base}/alerts", {"state": state}))]
    return Reading(run=run, signals=signals, alerts=alerts, time=time.time())


def read(args: argparse.Namespace) -> Reading:
    """One reading of ``args.run`` from ``args.db`` or ``args.url``; `SourceError` if none."""
    return _from_db(args) if args.db else _from_api(args)


# --- rendering ------------------------------------------------------------------------------------


def _style(metric: str, value: float | None) -> str:
    if value is None:
        return "dim"
    if not math.isfinite(value):
        return "bold red"
    if metric == nm.STABILITY_RATIO_TWO_SECANT and value >= 1.0:
        return "bold red"
    if metric == nm.GUARD_ACTIVE and value >= 1.0:
        return "yellow"
    return ""


def render(reading: Reading | None, error: str | None, source: str) -> RenderableType:
    """The screen: the run's line, the signals table, the open alerts, and the error if the last
    try failed (the last good reading stays above it)."""
    parts: list[RenderableType] = []
    if reading is not None:
        r = reading.run
        stamp = datetime.fromtimestamp(reading.time, UTC).strftime("%H:%M:%S")
        parts.append(Text.assemble(
            (r.name, "bold"), f"  step {fmt_int(r.last_step)}  last seen ",
            fmt_time(r.last_seen, reading.time), "  ",
            ("active", "green") if r.active else ("inactive", "dim"),
            (f"  (read {stamp} UTC from {source})", "dim")))
        rows: list[list[str | Text]] = [[label, metric, Text(fmt_value(reading.signals.get(metric)),
                                     _style(metric, reading.signals.get(metric)))]
                for metric, label in SIGNALS.items()]
        parts.append(table(["SIGNAL", "METRIC", "LATEST"], rows, right=frozenset({2})))
        parts.append(alerts_table(reading.alerts) if reading.alerts else Text("no open alerts"))
    if error is not None:
        parts.append(Text(error, "bold red"))
    return Group(*parts)


# --- the command ----------------------------------------------------------------------------------


_once = printed(read, lambda reading: reading.model_dump_json(indent=2),
                lambda reading, args: render(reading, None, args.url or args.db))


def _watch(args: argparse.Namespace) -> int:
    """Read and show until Ctrl-C: in place on a terminal, one reading after another if piped."""
    source = args.url or args.db
    console = Console(highlight=False)
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    reading: Reading | None = None
    try:
        if live is not None:
            live.start()
        while True:
            error = None
            try:
                reading = read(args)
            except SourceError as e:
                error = f"{e}; trying again every {args.interval:g} s (Ctrl-C to stop)"
            frame = render(reading, error, source)
            if live is not None:
                live.update(frame, refresh=True)
            else:
                show(Group(frame, Text()), console)  # never cut to 80 columns
                console.file.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        if live is not None:
            live.stop()


def main(args: argparse.Namespace) -> int:
    """Run `spikewatch tail`; 0 (after Ctrl-C, or --once read), 1 when --once cannot read,
    2 on bad input."""
    if not RUN_RE.match(args.run):
        print(f"spikewatch: not a valid run name: {args.run[:130]!r}", file=sys.stderr)
        return 2
    if args.json and not args.once:
        print("spikewatch: --json needs --once (a live view is a table)", file=sys.stderr)
        return 2
    return _once(args) if args.once else _watch(args)


def _positive(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not x > 0 or not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return x


def register(subparsers: Any) -> None:
    """Add `spikewatch tail RUN [--interval S] [--once] [--json] [--timeout S]` and the source
    options."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "tail", help="live table of a run's latest signals and open alerts",
        description="Show a run's latest loss, stability ratio, ρ, sign diversity, grad norm, "
                    "agent overhead and guard state and its open alerts, read again every "
                    "--interval seconds until Ctrl-C. A source that cannot be read is shown as "
                    "such and tried again.")
    p.add_argument("run", metavar="RUN", help="the run to watch")
    p.add_argument("--interval", type=_positive, default=2.0, metavar="SECONDS",
                   help="seconds between readings (default 2)")
    p.add_argument("--once", action="store_true", help="print one reading and exit")
    p.add_argument("--json", action="store_true", help="with --once: print the reading as JSON")
    p.add_argument("--timeout", type=_positive, default=5.0, metavar="SECONDS",
                   help="HTTP timeout of each request in seconds (default 5)")
    add_source_options(p, main, default="url")
