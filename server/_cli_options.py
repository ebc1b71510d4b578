"""Where a subcommand reads from: ``--url``, ``--db`` and ``--token``, named once for every one.

========== ========================== =====================================================
flag       environment variable       meaning
========== ========================== =====================================================
``--url``  ``$SPIKEWATCH_URL``        a running server's HTTP API
``--db``   ``$SPIKEWATCH_DB``         a database (SQLAlchemy URL or SQLite path), as `serve`
``--token`` ``$SPIKEWATCH_API_TOKEN`` bearer token for ``--url`` (``$SPIKEWATCH_TOKEN``:
                                      deprecated alias, still read, with a warning)
========== ========================== =====================================================

``--url`` and ``--db`` exclude each other. A flag wins over any variable; with no flag,
``$SPIKEWATCH_URL`` wins over ``$SPIKEWATCH_DB``; with neither, the subcommand's own default
(``runs``/``alerts``: the server at http://127.0.0.1:8000; ``report``/``backtest``: the database
sqlite:///spikewatch.db). After `add_source_options` the subcommand's ``func`` sees exactly one
of ``args.url`` / ``args.db`` set, and ``args.token``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Final, Literal

URL_ENV: Final = "SPIKEWATCH_URL"
DB_ENV: Final = "SPIKEWATCH_DB"
TOKEN_ENV: Final = "SPIKEWATCH_API_TOKEN"
DEPRECATED_TOKEN_ENV: Final = "SPIKEWATCH_TOKEN"
DEFAULT_URL: Final = "http://127.0.0.1:8000"
DEFAULT_DB: Final = "sqlite:///spikewatch.db"

Command = Callable[[argparse.Namespace], int]
Kind = Literal["url", "db"]


def _env(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


def token_from_env() -> str | None:
    """$SPIKEWATCH_API_TOKEN, else the deprecated $SPIKEWATCH_TOKEN (with a warning on stderr)."""
    if token := _env(TOKEN_ENV):
        return token
    if token := _env(DEPRECATED_TOKEN_ENV):
        print(f"spikewatch: warning: ${DEPRECATED_TOKEN_ENV} is deprecated, "
              f"set ${TOKEN_ENV} instead", file=sys.stderr)
        return token
    return None


def resolve_source(args: argparse.Namespace, default: Kind, *, http: bool = True) -> None:
    """Fill ``args.url``, ``args.db`` and ``args.token`` by the rules of this module."""
    url, db = (getattr(args, "url", None) if http else None), args.db
    if url is None and db is None:
        url = _env(URL_ENV) if http else None
        db = None if url is not None else _env(DB_ENV)
        if url is None and db is None:
            url, db = (DEFAULT_URL, None) if default == "url" else (None, DEFAULT_DB)
    if db is not None and "://" not in db:
        db = f"sqlite:///{db}"  # a bare path is a SQLite file
    args.url, args.db = url, db
    args.token = (getattr(args, "token", None) or token_from_env()) if url is not None else None


def add_source_options(p: argparse.ArgumentParser, command: Command, *, default: Kind,
                       http: bool = True) -> None:
    """Add ``--db`` (and with `http`, ``--url`` and ``--token``) to `p`; its ``func`` resolves
    them (`resolve_source`) and runs `command`."""
    if default == "url" and not http:
        raise ValueError("a subcommand without --url cannot default to a server")
    fallback = f"the server at {DEFAULT_URL}" if default == "url" else DEFAULT_DB
    src = p.add_mutually_exclusive_group()
    if http:
        src.add_argument("--url", default=None, metavar="URL",
                         help=f"a running server's HTTP API (default ${URL_ENV})")
    src.add_argument("--db", default=None, metavar="URL",
                     help=f"a database: SQLAlchemy URL or SQLite path (default ${DB_ENV})")
    if http:
        p.add_argument("--token", default=None, metavar="TOKEN",
                       help=f"bearer token for --url (default ${TOKEN_ENV}; prefer the "
                            "variable: a flag shows in the process list)")
    order = f"--url or --db, else ${URL_ENV}, else ${DB_ENV}" if http else f"--db, else ${DB_ENV}"
    p.epilog = f"Source: {order}, else {fallback}."

    def run(args: argparse.Namespace) -> int:
        resolve_source(args, default, http=http)
        return command(args)

    p.set_defaults(func=run)
