"""Helpers of the CLI tests: run the real `spikewatch` command, a database with two runs and a live
server over it."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spikewatch.protocol import wire
from spikewatch.server._cli_options import DB_ENV, DEPRECATED_TOKEN_ENV, TOKEN_ENV, URL_ENV
from spikewatch.server.api import Tokens, create_app
from spikewatch.server.store import Store
from spikewatch.server.types import AlertState, Severity, Transition
from tests._net import live_app

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ENVS = (URL_ENV, DB_ENV, TOKEN_ENV, DEPRECATED_TOKEN_ENV)
TOKEN = "cli-read-token-0123456789"


def spikewatch(*args: str, env: dict[str, str] | None = None,
               cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the real `spikewatch` command line (spikewatch.server.cli) in a subprocess, with none of
    the source variables of the calling environment."""
    full_env = {k: v for k, v in os.environ.items() if k not in SOURCE_ENVS}
    full_env.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "spikewatch.server.cli", *args],
                          capture_output=True, text=True, timeout=90, env=full_env, cwd=cwd,
                          check=False)


def fill(store: Store) -> None:
    """Two runs ("spiky-run": 1200 steps, two firing alerts, one NaN-valued; "calm", written
    last) and a resolved alert."""
    now = time.time()
    store.write(wire.Hello(wire.Header("1" * 32, 1, "spiky-run", 0, 4), {"model": "fnn"}))
    store.write(wire.Batch(wire.Header("1" * 32, 2, "spiky-run", 0, 4), tuple(
        wire.Record(step=s, time=now, scalars={"loss": 1.0}) for s in range(1, 1201))))
    store.write(wire.Batch(wire.Header("2" * 32, 1, "calm", 0, 1), (
        wire.Record(step=7, time=now, scalars={"loss": 0.5}),)))
    store.save_transitions([
        Transition("predicted_loss_spike", "spiky-run", Severity.PAGE, AlertState.PENDING, 1000,
                   now, 1.05),
        Transition("predicted_loss_spike", "spiky-run", Severity.PAGE, AlertState.FIRING, 1008,
                   now, 1.3),
        Transition("nonfinite_loss", "spiky-run", Severity.PAGE, AlertState.FIRING, 1150, now,
                   math.nan),
        Transition("overconfidence", "calm", Severity.INFO, AlertState.PENDING, 3, now, 0.99),
        Transition("overconfidence", "calm", Severity.INFO, AlertState.RESOLVED, 5, now, 0.5),
    ])


def database(path: Path) -> Path:
    """A migrated SQLite database at `path`, filled by `fill`."""
    store = Store(f"sqlite:///{path}")
    store.upgrade()
    fill(store)
    store.close()
    return path


@contextmanager
def live_server(db: Path) -> Iterator[str]:
    """A real HTTP server (uvicorn) over `db` requiring the read token `TOKEN`; its URL."""
    store = Store(f"sqlite:///{db}")
    try:
        with live_app(create_app(store, tokens=Tokens.from_lines([f"{TOKEN} read"]))) as url:
            yield url
    finally:
        store.close()
