"""`spikewatch runs` / `spikewatch alerts`: the real command, on a database and a live server."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from spikewatch.server._cli_options import TOKEN_ENV
from spikewatch.server._cli_tables import alerts_table, fmt_time, fmt_value, show, table
from spikewatch.server.api._schemas import AlertOut
from spikewatch.server.store import Store
from tests._net import free_port
from tests.server._cli import TOKEN, database, live_server, spikewatch


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return database(tmp_path_factory.mktemp("cli") / "cli.db")


@pytest.fixture(scope="module")
def server_url(db: Path) -> Iterator[str]:
    with live_server(db) as url:
        yield url


def _body(out: str) -> list[str]:
    """The rows of a printed table (after the header and the rule under it)."""
    lines = out.rstrip("\n").splitlines()
    assert set(lines[1]) <= {"─", "-"}  # the rule under the header (ASCII where not UTF-8)
    return lines[2:]


@pytest.mark.slow
def test_runs_from_database(db: Path) -> None:
    r = spikewatch("runs", "--db", str(db))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    body = _body(r.stdout)
    assert lines[0].split() == ["RUN", "LAST", "STEP", "LAST", "SEEN", "(UTC)", "WORLD", "ACTIVE",
                                "FIRING"]
    rows = {line.split()[0]: line for line in body}
    assert set(rows) == {"spiky-run", "calm"}
    spiky = rows["spiky-run"].split()
    assert spiky[1] == "1200"
    assert spiky[-3:] == ["4", "yes", "2"]  # world size, active, firing alerts
    assert rows["calm"].split()[-3:] == ["1", "yes", "0"]
    # aligned: every row's FIRING column ends where the header's does (right-aligned)
    assert len({len(line) for line in lines[:1] + body}) == 1


@pytest.mark.slow
def test_alerts_from_database_with_filters(db: Path) -> None:
    r = spikewatch("alerts", "--db", str(db), "--run", "spiky-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["RUN", "RULE", "SEVERITY", "STATE", "FIRST", "FIRED", "RESOLVED",
                                "VALUE"]
    rows = [line.split() for line in _body(r.stdout)]
    assert rows == [["spiky-run", "predicted_loss_spike", "page", "firing", "1000", "1008", "-",
                     "1.3"],
                    ["spiky-run", "nonfinite_loss", "page", "firing", "1150", "1150", "-", "nan"]]
    r = spikewatch("alerts", "--db", str(db), "--state", "resolved")
    assert [line.split()[:7] for line in _body(r.stdout)] == [
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
    assert [line.split()[0] for line in _body(runs.stdout)] == ["calm", "spiky-run"]
    one = spikewatch("alerts", "--url", server_url, "--run", "calm", env={TOKEN_ENV: TOKEN})
    assert [line.split()[0] for line in _body(one.stdout)] == ["calm"]


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


def _printed(renderable: object, width: int) -> list[str]:
    buf = io.StringIO()
    show(renderable, Console(file=buf, width=width))  # type: ignore[arg-type]
    return buf.getvalue().splitlines()


def test_table_alignment_and_no_cut_into_a_pipe() -> None:
    t = table(["A", "NUM"], [["long-name", "1"], ["[red]x", "12345"]], right=frozenset({1}))
    lines = _printed(t, width=12)  # not a terminal: printed whole although 12 columns are less
    assert [lines[0], *lines[2:]] == ["A             NUM",
                                      "long-name       1",
                                      "[red]x      12345"]  # a cell is text, never markup
    assert set(lines[1]) == {"─"}
    a = AlertOut(run="r", rule="x", severity="page", state="pending", first_step=1,
                 fired_step=None, resolved_step=None, value=math.nan, started_at=0.0,
                 fired_at=None, resolved_at=None, labels={}, annotations={})
    assert _printed(alerts_table([a]), width=80)[2].split() == [
        "r", "x", "page", "pending", "1", "-", "-", "nan"]


@pytest.mark.slow
def test_json_is_what_the_api_answers(db: Path, server_url: str, tmp_path: Path) -> None:
    direct = spikewatch("alerts", "--db", str(db), "--json")
    assert direct.returncode == 0, direct.stderr
    alerts = json.loads(direct.stdout)
    by_rule = {a["rule"]: a for a in alerts if a["run"] == "spiky-run"}
    assert by_rule["nonfinite_loss"]["value"] == "NaN"  # non-finite as the API encodes it
    assert by_rule["predicted_loss_spike"]["value"] == 1.3
    assert by_rule["predicted_loss_spike"]["resolved_step"] is None
    via_http = spikewatch("alerts", "--url", server_url, "--json", env={TOKEN_ENV: TOKEN})
    assert json.loads(via_http.stdout) == alerts
    runs = json.loads(spikewatch("runs", "--db", str(db), "--json").stdout)
    assert [(r["name"], r["last_step"], r["firing_alerts"]) for r in runs] == [
        ("calm", 7, 0), ("spiky-run", 1200, 2)]
    assert runs == json.loads(
        spikewatch("runs", "--url", server_url, "--json", env={TOKEN_ENV: TOKEN}).stdout)
    store = Store(f"sqlite:///{tmp_path}/empty.db")
    store.upgrade()
    store.close()
    assert json.loads(spikewatch("runs", "--db", str(tmp_path / "empty.db"), "--json").stdout) == []
