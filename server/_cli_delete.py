"""`spikewatch runs delete RUN` and `spikewatch runs prune --older-than AGE`: delete runs with all
their data (sessions, series, histograms, events, alerts), on a database or through a server.

``--db`` deletes in the database directly (`Store.delete_runs`); ``--url`` asks the server
(``DELETE /api/v1/runs/{run}``, which needs a token of the admin scope). The server refuses new
runs beyond ``ingest.max_runs`` (10,000 by default): pruning old runs is the way out. An active
run (one that sent data within the active window) is kept unless ``--force``; neither command
deletes without ``--yes`` unless it can ask on a terminal.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple
from urllib.parse import quote

from rich.console import Console
from rich.prompt import Confirm

from spikewatch.server._cli_options import add_source_options
from spikewatch.server._cli_progress import track
from spikewatch.server._cli_tables import (
    RUNS_JSON,
    SourceError,
    fetch_runs,
    fmt_time,
    http_call,
    open_store,
    runs_table,
    show,
)

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE_RE: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_CHUNK: Final = 100  # runs per transaction when pruning a database


class Age(NamedTuple):
    """An age as given (``30d``) and in seconds."""

    text: str
    seconds: float


def parse_age(text: str) -> Age:
    """An age such as ``30d``, ``12h``, ``90m``, ``3600s`` or ``2w``."""
    m = _AGE_RE.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age: a number and one of s, m, h, d, w (e.g. 30d)")
    return Age(text.strip(), float(m.group(1)) * _UNITS[m.group(2)])


class _RefusedError(Exception):
    """The command will not go on; the message says why (exit status 1, or 2 for usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _confirm(question: str, args: argparse.Namespace) -> bool:
    """True with --yes; else ask on the terminal; refuse when stdin is not one."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise _RefusedError("not deleting without --yes (stdin is not a terminal to ask on)", 2)
    return Confirm.ask(question, console=Console(stderr=True), default=False)


def _delete(args: argparse.Namespace, names: Sequence[str]) -> int:
    """Delete `names` from the source; how many were deleted (a run already gone is skipped)."""
    if args.db:
        done = 0
        with open_store(args.db) as store:
            chunks = [names[i:i + _CHUNK] for i in range(0, len(names), _CHUNK)]
            for chunk in track(chunks, "deleting", enabled=not getattr(args, "json", False)):
                done += store.delete_runs(chunk)
        return done
    done = 0
    params = {"force": "true"} if args.force else {}
    for name in track(names, "deleting", enabled=not getattr(args, "json", False)):
        try:
            http_call(args, f"/api/v1/runs/{quote(name, safe='')}", params, method="DELETE")
            done += 1
        except SourceError as e:
            if e.status == 404:
                continue  # deleted meanwhile
            if e.status == 403:
                raise _RefusedError(f"{e} (deleting needs a token of the admin scope)") from None
            raise
    return done


def _run_delete(args: argparse.Namespace) -> int:
    found = [r for r in fetch_runs(args) if r.name == args.run]
    if not found:
        raise _RefusedError(f"unknown run {args.run!r}")
    when = fmt_time(found[0].last_seen, time.time())
    if found[0].active and not args.force:
        raise _RefusedError(f"run {args.run!r} is active (last seen {when}): stop it first or "
                            "give --force")
    if not _confirm(f"Delete run {args.run!r} (last seen {when}) and all its data?", args):
        print("nothing deleted", file=sys.stderr)
        return 1
    _delete(args, [args.run])
    print(f"deleted run {args.run!r}")
    return 0


def _run_prune(args: argparse.Namespace) -> int:
    now = time.time()
    age: Age = args.older_than
    old = [r for r in fetch_runs(args) if r.last_seen < now - age.seconds]
    if not args.force and (active := sum(r.active for r in old)):
        print(f"spikewatch: keeping {active} active run(s) (--force deletes them too)",
              file=sys.stderr)
        old = [r for r in old if not r.active]
    what = f"last seen more than {age.text} ago"
    if args.json and (args.dry_run or not old):
        print(RUNS_JSON.dump_json(old, indent=2).decode())
        return 0
    if not old:
        print(f"no runs {what}")
        return 0
    if args.dry_run:
        show(runs_table(old, now))
        print(f"would delete {len(old)} run(s) {what}")
        return 0
    if not _confirm(f"Delete {len(old)} run(s) {what} and all their data?", args):
        print("nothing deleted", file=sys.stderr)
        return 1
    done = _delete(args, [r.name for r in old])
    if args.json:
        print(RUNS_JSON.dump_json(old, indent=2).decode())
    else:
        print(f"deleted {done} run(s) {what}")
    return 0


Command = Callable[[argparse.Namespace], int]


def _guarded(command: Command) -> Command:
    def run(args: argparse.Namespace) -> int:
        if args.url and args.db:
            print("spikewatch: give --url or --db, not both", file=sys.stderr)
            return 2
        try:
            return command(args)
        except (SourceError, _RefusedError) as e:
            print(f"spikewatch: {e}", file=sys.stderr)
            return e.status if isinstance(e, _RefusedError) else 1

    return run


def _inherit(p: argparse.ArgumentParser, dests: set[str]) -> None:
    """Options also given to `runs` itself (`runs --db F prune ...`) keep their value: the
    subcommand's own defaults must not overwrite them."""
    for action in p._actions:
        if action.dest in dests:
            action.default = argparse.SUPPRESS


def register(runs: argparse.ArgumentParser) -> None:
    """Add `delete` and `prune` under the `runs` subcommand (whose own action stays the listing)."""
    actions = runs.add_subparsers(dest="action", metavar="ACTION")
    epilog = ("Through --url the server needs a token of the admin scope; through --db the "
              "database is changed directly (a running server frees the deleted runs' places "
              "under ingest.max_runs within seconds; to delete a run that still sends, prefer "
              "--url).")
    p = actions.add_parser("delete", help="delete a run and all its data",
                           description="Delete a run with its sessions, series, histograms, "
                                       "events and alerts. " + epilog)
    p.add_argument("run", metavar="RUN", help="the run to delete")
    _options(p, _run_delete)
    p = actions.add_parser("prune", help="delete runs not seen for a while",
                           description="Delete every run last seen longer ago than --older-than, "
                                       "with all its data. The server refuses new runs beyond "
                                       "ingest.max_runs (10,000): prune is the way out. " + epilog)
    p.add_argument("--older-than", required=True, type=parse_age, metavar="AGE",
                   help="last seen longer ago than AGE: a number and s, m, h, d or w (e.g. 30d)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs that would be deleted, delete nothing")
    p.add_argument("--json", action="store_true",
                   help="print the runs deleted (or with --dry-run, to delete) as JSON")
    _options(p, _run_prune)


def _options(p: argparse.ArgumentParser, command: Command) -> None:
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--force", action="store_true", help="also delete active runs")
    p.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds")
    add_source_options(p, _guarded(command), default="url")
    _inherit(p, {"url", "db", "token", "timeout"})
