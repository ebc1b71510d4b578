"""The `spikewatch` command line.

    spikewatch serve [--db URL] [--zmq ENDPOINT] [--http-host H] [--http-port P]
                     [--config FILE] [--rules FILE]
    spikewatch db upgrade [REV] | downgrade REV | current    [--db URL] [--config FILE]
    spikewatch bench early-warning|guard [--checkout DIR] [ARGS ...]
    spikewatch --version

Other subcommands register themselves from their own modules (see `_register_optional`); those
that read runs name their source alike (`server._cli_options`: --url, --db, --token).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spikewatch import __version__
from spikewatch.server._cli_options import DB_ENV, DEFAULT_DB
from spikewatch.server._settings import ConfigError, Settings, load_settings


def _settings(args: argparse.Namespace, **flags: Any) -> Settings:
    return load_settings(args.config, db=args.db, **flags)


def _serve(args: argparse.Namespace) -> int:
    from spikewatch.server.daemon import Daemon

    settings = _settings(args, zmq=args.zmq, http_host=args.http_host, http_port=args.http_port,
                         rules=args.rules)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return Daemon(settings).run()


def _db(args: argparse.Namespace) -> int:
    from spikewatch.server.daemon import safe_url
    from spikewatch.server.store import Store

    settings = _settings(args)
    store = Store(settings.db)
    try:
        if args.action == "upgrade":
            store.upgrade(args.revision or "head")
        elif args.action == "downgrade":
            if not args.revision:
                raise ConfigError("db downgrade needs a revision (e.g. 'base')")
            store.downgrade(args.revision)
        print(f"{safe_url(settings.db)}: revision {store.current() or 'none (empty database)'}"
              f"{' (head)' if store.at_head() else ''}")
    finally:
        store.close()
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="YAML or TOML config file (flags and SPIKEWATCH_* env override it)")
    p.add_argument("--db", default=None, metavar="URL",  # None: `Settings` resolves it
                   help=f"database URL (default ${DB_ENV}, the config file, or {DEFAULT_DB}; "
                        "postgresql+psycopg://user@host/db for PostgreSQL)")


def _register_optional(sub: Any) -> None:
    """Subcommands owned by other modules, added when those modules are present."""
    # --- `spikewatch runs`, `spikewatch alerts` (server/_cli_tables.py) ---
    # --- `spikewatch backtest` (server/backtest.py) ---
    for name in ("spikewatch.server._cli_tables", "spikewatch.server.backtest"):
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(sub)
    # `spikewatch runs delete/prune` (server/_cli_delete.py), under `runs`
    importlib.import_module("spikewatch.server._cli_delete").register(sub.choices["runs"])
    importlib.import_module("spikewatch.server._cli_tail").register(sub)  # `spikewatch tail`
    # --- further subcommands register here the same way ---
    importlib.import_module("spikewatch.server.rules._cli").register(sub)  # `spikewatch rules`
    importlib.import_module("spikewatch.server.report").register(sub)  # `spikewatch report`
    importlib.import_module("spikewatch.server._cli_keygen").register(sub)  # `spikewatch keygen`
    importlib.import_module("spikewatch.server._cli_bench").register(sub)  # `spikewatch bench`


def parser() -> argparse.ArgumentParser:
    """The argument parser of `spikewatch`."""
    ap = argparse.ArgumentParser(prog="spikewatch",
                                 description="Loss-spike early warning for PyTorch training.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server (collector, store, rules, API)",
                           description="Run the spikewatch server until SIGTERM/SIGINT.")
    _common(serve)
    serve.add_argument("--zmq", default=None, metavar="ENDPOINT",
                       help="ZeroMQ endpoint for agents (default tcp://127.0.0.1:5557)")
    serve.add_argument("--http-host", default=None, metavar="HOST",
                       help="HTTP API host (default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, default=None, metavar="PORT",
                       help="HTTP API port (default 8000)")
    serve.add_argument("--rules", type=Path, default=None, metavar="FILE",
                       help="alert rule file (YAML; default: the built-in pack)")
    serve.set_defaults(func=_serve)

    db = sub.add_parser("db", help="database migrations",
                        description="Show or change the database schema revision.")
    db.add_argument("action", choices=("upgrade", "downgrade", "current"))
    db.add_argument("revision", nargs="?", default=None,
                    help="target revision (upgrade: default head; downgrade: e.g. base)")
    _common(db)
    db.set_defaults(func=_db)

    _register_optional(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `spikewatch` console script."""
    ap = parser()
    args, extra = ap.parse_known_args(argv)
    if extra and not getattr(args, "forwards", False):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    args.forwarded = extra  # a command that runs another program hands these on (bench)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"spikewatch: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
