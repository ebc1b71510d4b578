"""`spikewatch report --run NAME`: a postmortem PNG and a self-contained HTML page of one run.

    spikewatch report --run NAME [--db URL | --url http://HOST:PORT [--token T]] [--out DIR]

writes DIR/NAME.png and DIR/NAME.html: loss (spike onsets marked), stability ratio vs 1, ρ and
√v̂ decay, sign diversity and spike share, alert spans, with the five phases shaded. The run is read
from a database (`--db`) or from a running server's HTTP API (`--url`). matplotlib (extra
``report``) draws both: the PNG, and the HTML's charts as inline SVG. This package imports without
it; drawing without it is a `ReportError` with the install hint.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from spikewatch.server._cli_options import add_source_options
from spikewatch.server.report._data import ReportError, RunData, from_api, from_store

__all__ = ["ReportError", "RunData", "from_api", "from_store", "load", "register", "write_report"]


def write_report(run: RunData, out_dir: Path | str) -> tuple[Path, Path]:
    """Draw `run` and write OUT/NAME.png and OUT/NAME.html; their paths (`ReportError` without
    matplotlib)."""
    from spikewatch.server.report._html import render_html
    from spikewatch.server.report._layout import layout
    from spikewatch.server.report._png import render_png

    lay = layout(run)  # worked out once for both formats
    png = render_png(lay)
    html = render_html(lay, png, time.time())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png_path, html_path = out / f"{run.name}.png", out / f"{run.name}.html"
    for path, data in ((png_path, png), (html_path, html.encode("utf-8"))):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # a reader never sees half a file
    return png_path, html_path


def _sqlite_file(url: str) -> Path | None:
    """The database file of a sqlite URL (None: not a file database)."""
    if not url.startswith("sqlite") or ":memory:" in url:
        return None
    path = url.split("///", 1)[1] if "///" in url else ""
    return Path(path.split("?", 1)[0]) if path else None


def _safe_url(url: str) -> str:
    """A database URL fit for messages (password hidden)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable database url>"


def load(run: str, *, db: str | None = None, url: str | None = None,
         token: str | None = None, timeout: float = 30.0) -> RunData:  # fmt: skip
    """Read a run from a database URL or a server URL; `ReportError` with the reason if not."""
    from spikewatch.protocol.wire import RUN_RE

    if not RUN_RE.match(run):
        raise ReportError(f"not a valid run name: {run[:130]!r}")
    if url is not None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(base_url=url, headers=headers, timeout=timeout) as client:
            return from_api(client, run)
    db = db or "sqlite:///spikewatch.db"
    from sqlalchemy.exc import SQLAlchemyError

    from spikewatch.server.store import Store

    shown = _safe_url(db)
    f = _sqlite_file(db)
    if f is not None and not f.is_file():
        raise ReportError(f"no database file at {f} ({shown})")
    try:
        store = Store(db)
    except (SQLAlchemyError, ValueError, ImportError) as e:
        raise ReportError(f"cannot open {shown}: {type(e).__name__}: {e}") from None
    try:
        return from_store(store, run, source=shown)
    except SQLAlchemyError as e:
        raise ReportError(f"cannot read {shown} (is it a migrated spikewatch database?): "
                          f"{type(e).__name__}") from None  # fmt: skip
    finally:
        store.close()


_DESCRIPTION = ("Draw a run's loss, stability ratio, ρ, sign diversity, alerts and phases into "
                "NAME.png and a self-contained NAME.html (charts as inline SVG, no network).")


def register(subparsers: Any) -> None:
    """Add `spikewatch report --run NAME [--db URL | --url URL [--token T]] [--out DIR]`."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "report", help="postmortem PNG and HTML page of a run", description=_DESCRIPTION)
    p.add_argument("--run", required=True, metavar="NAME", help="the run to draw")
    p.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                   help="output directory (default: the current directory)")
    add_source_options(p, main, default="db")


def main(args: argparse.Namespace) -> int:
    """Run the report subcommand; 0 on success, 2 when the run cannot be read or drawn."""
    try:
        importlib.import_module("spikewatch.server.report._draw")  # no matplotlib: ReportError
        run = load(args.run, db=args.db or os.environ.get("SPIKEWATCH_DB"), url=args.url,
                   token=args.token)  # fmt: skip
        png, html = write_report(run, args.out)
    except (ReportError, OSError) as e:
        print(f"spikewatch report: {e}", file=sys.stderr)
        return 2
    for m in run.missing:
        print(f"note: run {run.name!r} has no {m} series (skipped)", file=sys.stderr)
    print(f"wrote {png}\nwrote {html}")
    return 0
