"""`spikewatch runs` / `spikewatch alerts`: the real command, on a database and a live server."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spikewatch.protocol import wire
from spikewatch.server._cli_tables import TOKEN_ENV, alerts_table, fmt_time, fmt_value, table
from spikewatch.server.api import Tokens, create_app
from spikewatch.server.api._schemas import AlertOut
from spikewatch.server.store import Store
from spikewatch.server.types import AlertState, Severity, Transition
from tests._net import free_port, live_app

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "cli-read-token-0123456789"


def spikewatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `spikewatch` command line (spikewatch.server.cli) in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    full_env.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "spikewatch.server.cli", *args],
                          capture_output=True, text=True, timeout=60, env=full_env, cwd=ROOT,
                          check=False)


def _fill(store: Store) -> None:
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


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "cli.db"
    store = Store(f"sqlite:///{path}")
    store.upgrade()
    _fill(store)
    store.close()
    return path


@pytest.fixture(scope="module")
def server_url(db: Path) -> Iterator[str]:
    """A real HTTP server (uvicorn) over the same database, with bearer tokens on."""
    store = Store(f"sqlite:///{db}")
    app = create_app(store, tokens=Tokens.from_lines([f"{TOKEN} read"]))
    with live_app(app) as url:
        yield url
    store.close()


def _columns(out: str) -> tuple[list[str], list[str]]:
    lines = out.rstrip("\n").splitlines()
    assert set(lines[1].replace(" ", "")) == {"-"}  # the rule under the header
    return lines[0].split("  "), lines[2:]


@pytest.mark.slow
def test_runs_from_database(db: Path) -> None:
    r = spikewatch("runs", "--db", str(db))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["RUN", "LAST", "STEP", "LAST", "SEEN", "(UTC)", "WORLD", "ACTIVE",
                                "FIRING"]
    body = {line.split()[0]: line for line in lines[2:]}
    assert set(body) == {"spiky-run", "calm"}
    spiky = body["spiky-run"].split()
    assert spiky[1] == "1200"
    assert spiky[-3:] == ["4", "yes", "2"]  # world size, active, firing alerts
    assert body["calm"].split()[-3:] == ["1", "yes", "0"]
    # aligned: every row's FIRING column ends where the header's does (right-aligned)
    assert len({len(line) for line in lines[:1] + lines[2:]}) == 1


@pytest.mark.slow
def test_alerts_from_database_with_filters(db: Path) -> None:
    r = spikewatch("alerts", "--db", str(db), "--run", "spiky-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["RUN", "RULE", "SEVERITY", "STATE", "FIRST", "FIRED", "RESOLVED",
                                "VALUE"]
    rows = [line.split() for line in lines[2:]]
    assert rows == [["spiky-run", "predicted_loss_spike", "page", "firing", "1000", "1008", "-",
                     "1.3"],
                    ["spiky-run", "nonfinite_loss", "page", "firing", "1150", "1150", "-", "nan"]]
    r = spikewatch("alerts", "--db", str(db), "--state", "resolved")
    assert [line.split()[:7] for line in r.stdout.splitlines()[2:]] == [
        ["calm", "overconfidence", "info", "resolved", "3", "-", "5"]]
    r = spikewatch("alerts", "--db", str(db), "--run", "calm", "--state", "firing")
    assert r.returncode == 0
    assert r.stdout.strip() == "no alerts"


@pytest.mark.slow
def test_same_tables_over_http_with_token(db: Path, server_url: str) -> None:
    direct = spikewatch("alerts", "--db", str(db))
    via_http = spikewatch("alerts", "--url", server_url, env={TOKEN_ENV: TOKEN})
    assert via_http.returncode == 0, via_http.stderr
    assert via_http.stdout == direct.stdout
    assert "nan" in via_http.stdout
    runs = spikewatch("runs", "--url", server_url, env={TOKEN_ENV: TOKEN})
    assert runs.returncode == 0, runs.stderr
    # most recently seen first: "calm" was written last
    assert [line.split()[0] for line in runs.stdout.splitlines()[2:]] == ["calm", "spiky-run"]
    one = spikewatch("alerts", "--url", server_url, "--run", "calm", env={TOKEN_ENV: TOKEN})
    assert [line.split()[0] for line in one.stdout.splitlines()[2:]] == ["calm"]


@pytest.mark.slow
def test_errors_are_clear_and_nonzero(db: Path, server_url: str, tmp_path: Path) -> None:
    r = spikewatch("runs", "--url", server_url)  # no token
    assert r.returncode == 1
    assert TOKEN_ENV in r.stderr
    r = spikewatch("alerts", "--url", server_url, "--run", "nope", env={TOKEN_ENV: TOKEN})
    assert r.returncode == 1
    assert "404" in r.stderr
    assert "unknown run" in r.stderr
    r = spikewatch("alerts", "--db", str(db), "--run", "nope")
    assert r.returncode == 1
    assert "unknown run" in r.stderr
    r = spikewatch("runs", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert r.returncode == 1
    assert "cannot reach" in r.stderr
    r = spikewatch("runs", "--db", str(tmp_path / "missing.db"))
    assert r.returncode == 1
    assert "missing.db" in r.stderr
    assert not (tmp_path / "missing.db").exists()  # reading never creates a database
    r = spikewatch("alerts", "--db", str(db), "--state", "burning")
    assert r.returncode == 2  # argparse rejects it


@pytest.mark.slow
def test_empty_database_says_so(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/empty.db")
    store.upgrade()
    store.close()
    assert spikewatch("runs", "--db", str(tmp_path / "empty.db")).stdout.strip() == "no runs"


# --- formatting --------------------------------------------------------------------------------


def test_value_and_time_formatting() -> None:
    assert [fmt_value(x) for x in (math.nan, math.inf, -math.inf, None, 1.23456, 12345678.0)] == [
        "nan", "inf", "-inf", "-", "1.235", "1.235e+07"]
    assert fmt_time(0.0, 90.0) == "1970-01-01 00:00:00 (1m ago)"
    assert fmt_time(0.0, 3 * 86400.0).endswith("(3d ago)")
    assert fmt_time(None, 0.0) == "-"


def test_table_alignment() -> None:
    out = table(["A", "NUM"], [["long-name", "1"], ["x", "12345"]], right=frozenset({1}))
    assert out.splitlines() == ["A            NUM",
                                "---------  -----",
                                "long-name      1",
                                "x          12345"]
    a = AlertOut(run="r", rule="x", severity="page", state="pending", first_step=1,
                 fired_step=None, resolved_step=None, value=math.nan, started_at=0.0,
                 fired_at=None, resolved_at=None, labels={}, annotations={})
    assert alerts_table([a]).splitlines()[2].split() == ["r", "x", "page", "pending", "1", "-",
                                                         "-", "nan"]
