"""The `spikewatch` command as a whole: --version, and one naming of --url/--db/--token and their
environment variables in every subcommand that reads runs (runs, alerts, report, backtest)."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from spikewatch.server._cli_options import (
    DB_ENV,
    DEFAULT_DB,
    DEFAULT_URL,
    DEPRECATED_TOKEN_ENV,
    TOKEN_ENV,
    URL_ENV,
    Kind,
    resolve_source,
)
from spikewatch.server.backtest import Episode, Report, RuleScore, report_json
from spikewatch.server.types import Severity
from tests._net import free_port
from tests.server._cli import SOURCE_ENVS, TOKEN, database, live_server, spikewatch


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return database(tmp_path_factory.mktemp("cli") / "cli.db")


@pytest.fixture(scope="module")
def server_url(db: Path) -> Iterator[str]:
    with live_server(db) as url:
        yield url


def test_version() -> None:
    r = spikewatch("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"spikewatch {importlib.metadata.version('spikewatch')}"


@pytest.mark.parametrize("command", ["runs", "alerts", "report", "backtest"])
def test_every_reader_names_its_source_alike(command: str) -> None:
    r = spikewatch(command, "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert f"--db URL a database: SQLAlchemy URL or SQLite path (default ${DB_ENV})" in text
    if command == "backtest":  # replays from the database only
        assert "--url" not in text
        assert "--token" not in text
    else:
        assert f"--url URL a running server's HTTP API (default ${URL_ENV})" in text
        assert f"--token TOKEN bearer token for --url (default ${TOKEN_ENV}" in text


# --- resolution rules (in-process) ----------------------------------------------------------------


def _resolve(default: Kind, env: dict[str, str], *, http: bool = True,
             **flags: str) -> tuple[str | None, str | None, str | None]:
    args = argparse.Namespace(url=flags.get("url"), db=flags.get("db"), token=flags.get("token"))
    with pytest.MonkeyPatch.context() as mp:
        for name in SOURCE_ENVS:
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        resolve_source(args, default, http=http)
    return args.url, args.db, args.token


def test_flags_then_url_variable_then_db_variable_then_default() -> None:
    assert _resolve("url", {}) == (DEFAULT_URL, None, None)
    assert _resolve("db", {}) == (None, DEFAULT_DB, None)
    both = {URL_ENV: "http://u:1", DB_ENV: "sqlite:///e.db"}
    assert _resolve("db", both) == ("http://u:1", None, None)
    assert _resolve("url", {DB_ENV: "sqlite:///e.db"}) == (None, "sqlite:///e.db", None)
    assert _resolve("url", both, db="f.db") == (None, "sqlite:///f.db", None)  # a bare path
    assert _resolve("db", both, url="http://f:2") == ("http://f:2", None, None)
    assert _resolve("db", both, http=False) == (None, "sqlite:///e.db", None)


def test_token_flag_then_variable_then_deprecated_alias(capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    env = {TOKEN_ENV: "new", DEPRECATED_TOKEN_ENV: "old"}
    assert _resolve("url", env, token="flag")[2] == "flag"
    assert _resolve("url", env)[2] == "new"
    assert capsys.readouterr().err == ""
    assert _resolve("url", {DEPRECATED_TOKEN_ENV: "old"})[2] == "old"
    assert f"${DEPRECATED_TOKEN_ENV} is deprecated" in capsys.readouterr().err
    assert _resolve("url", {DEPRECATED_TOKEN_ENV: "old", DB_ENV: "x.db"})[2] is None  # not used
    assert capsys.readouterr().err == ""


# --- the real command ---------------------------------------------------------------------------


@pytest.mark.slow
def test_url_and_token_from_the_environment_or_flags(db: Path, server_url: str) -> None:
    r = spikewatch("runs", "--json", env={URL_ENV: server_url, TOKEN_ENV: TOKEN})
    assert r.returncode == 0, r.stderr
    assert {run["name"] for run in json.loads(r.stdout)} == {"calm", "spiky-run"}
    r = spikewatch("alerts", "--url", server_url, "--token", TOKEN, "--run", "calm")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[2].split()[:2] == ["calm", "overconfidence"]
    r = spikewatch("runs", env={URL_ENV: server_url, DEPRECATED_TOKEN_ENV: TOKEN})
    assert r.returncode == 0, r.stderr
    assert f"${DEPRECATED_TOKEN_ENV} is deprecated, set ${TOKEN_ENV} instead" in r.stderr
    r = spikewatch("runs", "--json", env={DB_ENV: str(db)})  # no server asked
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == 2
    dead = f"http://127.0.0.1:{free_port()}"
    r = spikewatch("runs", "--db", str(db), env={URL_ENV: dead})  # the flag wins
    assert r.returncode == 0, r.stderr
    r = spikewatch("runs", "--db", str(db), "--url", server_url)
    assert r.returncode == 2
    assert "not allowed with argument" in r.stderr


@pytest.mark.slow
def test_report_reads_the_same_variables(server_url: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    r = spikewatch("report", "--run", "calm", "--out", str(tmp_path),
                   env={URL_ENV: server_url, TOKEN_ENV: TOKEN})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "calm.html").is_file()
    assert "deprecated" not in r.stderr


@pytest.mark.slow
def test_backtest_json_from_the_db_variable(db: Path) -> None:
    r = spikewatch("backtest", "--run", "spiky-run", "--json", env={DB_ENV: str(db)})
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert (rep["run"], rep["steps"], rep["onsets"]) == ("spiky-run", 1200, [])
    assert "predicted_loss_spike" in {s["rule"] for s in rep["rules"]}
    r = spikewatch("backtest", "--run", "spiky-run", "--url", "http://127.0.0.1:8000")
    assert r.returncode == 2  # replays the database only
    assert "unrecognized arguments: --url" in r.stderr


def test_backtest_json_encodes_non_finite_values_as_the_api() -> None:
    ep = Episode("nonfinite_loss", Severity.PAGE, 10, 10, None, math.nan)
    big = Episode("nonfinite_loss", Severity.PAGE, 20, 21, 30, -math.inf)
    rep = Report("r", 40, [12], [RuleScore("nonfinite_loss", Severity.PAGE, [ep, big],
                                           ["true", "false"], [2])],
                 1.0, [2], 1, 0, 1, 0)
    out = json.loads(report_json(rep))
    assert [a["value"] for a in out["rules"][0]["alerts"]] == ["NaN", "-Infinity"]
    assert out["rules"][0]["severity"] == "page"
    assert (out["recall"], out["median_lead"]) == (1.0, 2)
