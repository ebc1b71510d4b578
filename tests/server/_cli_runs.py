"""Helpers of the `tail` and `runs delete/prune` tests: runs with every key signal written through
the Store API, a run made old, row counts per table, a real `spikewatch serve` with tokens."""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from spikewatch.protocol import names as nm
from spikewatch.protocol import wire
from spikewatch.server.process import ServerProcess
from spikewatch.server.store import Store
from spikewatch.server.types import AlertState, Severity, Transition

ADMIN = "cli-admin-token-0123456789"
READ = "cli-read-token-0123456789"
DAY = 86400.0
RUN_TABLES = ("sessions", "scalars", "layer_values", "histograms", "events", "partials", "alerts",
              "latest")

SIGNALS = {nm.LOSS: 2.5, nm.STABILITY_RATIO_TWO_SECANT: 1.25, nm.RHO_SAMPLED: 0.03,
           nm.SA_SIGN_DIVERSITY: 0.4, nm.GRAD_NORM: math.inf, nm.AGENT_OVERHEAD: 0.012,
           nm.GUARD_ACTIVE: 1.0}
"""The last step's value of each key signal written by `write_run` (one non-finite)."""


def write_run(store: Store, run: str, steps: int = 50, session: str = "a") -> None:
    """A run of `steps` steps with every key signal, a layer value, a histogram and an event each
    step, two open alerts (one pending, one firing) and a resolved one."""
    now = time.time()
    header = wire.Header(session * 32, 1, run, 0, 1)
    store.write(wire.Hello(header, {"model": "tiny"}))
    hist = wire.Histogram(-1.0, 1.0, (1, 2, 3))
    records = tuple(
        wire.Record(step=s, time=now, scalars={m: (v if s == steps else 0.5)
                                               for m, v in SIGNALS.items()},
                    layers={nm.SA_MEAN: {"fc1": 0.1}}, hists={nm.SA_HIST: {"fc1": hist}},
                    events=(wire.Event("lr_change", {"lr": 0.1}),) if s == 1 else ())
        for s in range(1, steps + 1))
    store.write(wire.Batch(wire.Header(session * 32, 2, run, 0, 1), records))
    store.save_transitions([
        Transition("predicted_loss_spike", run, Severity.PAGE, AlertState.PENDING, steps - 5, now,
                   1.1),
        Transition("predicted_loss_spike", run, Severity.PAGE, AlertState.FIRING, steps - 2, now,
                   1.25),
        Transition("loss_spike", run, Severity.WARNING, AlertState.PENDING, steps - 1, now, 2.0),
        Transition("overconfidence", run, Severity.INFO, AlertState.PENDING, 3, now, 0.99),
        Transition("overconfidence", run, Severity.INFO, AlertState.RESOLVED, 5, now, 0.5),
    ])


def make_old(db: Path, run: str, days: float) -> None:
    """Pretend `run` was last heard from `days` days ago."""
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET last_seen = ? WHERE name = ?",
                     (time.time() - days * DAY, run))


def rows_of(db: Path, run: str) -> dict[str, int]:
    """Rows per table that belong to `run` (by its id; 0 everywhere once it is deleted)."""
    with sqlite3.connect(db) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM runs WHERE name = ?", (run,))]
        if not ids:
            ids = [-1]
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t} WHERE run_id = ?", (ids[0],))
                .fetchone()[0] for t in RUN_TABLES}


def run_names(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM runs")}


def new_db(path: Path, runs: Sequence[str]) -> Path:
    """A migrated SQLite database at `path` holding `runs`, each written by `write_run`."""
    store = Store(f"sqlite:///{path}")
    try:
        store.upgrade()
        for session, run in zip("abcdefgh", runs, strict=False):
            write_run(store, run, session=session)
    finally:
        store.close()
    return path


def server(db: Path, workdir: Path, *, http_port: int | None = None) -> ServerProcess:
    """`spikewatch serve` over `db` requiring tokens (`ADMIN` admin, `READ` read)."""
    tokens = workdir / "api_tokens"
    workdir.mkdir(parents=True, exist_ok=True)
    tokens.write_text(f"{ADMIN} admin\n{READ} read\n")
    tokens.chmod(0o600)
    return ServerProcess(f"sqlite:///{db}", workdir, http_port=http_port,
                         env={"SPIKEWATCH_AUTH__API_TOKENS_FILE": str(tokens)})
