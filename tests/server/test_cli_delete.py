"""`spikewatch runs delete` and `spikewatch runs prune` through the real CLI, on a SQLite database
filled through the Store API and through a real `spikewatch serve` (DELETE /api/v1/runs/{run},
admin scope): every row of a deleted run goes, active runs stay unless --force, nothing goes
without --yes when there is no terminal to ask on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spikewatch.server._cli_delete import parse_age
from spikewatch.server.process import ServerProcess
from tests.server._cli import spikewatch
from tests.server._cli_runs import (
    ADMIN,
    READ,
    make_old,
    new_db,
    rows_of,
    run_names,
    server,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Runs "old-1" (40 days), "old-2" (31 days), "recent" (2 days), "live" (active)."""
    path = new_db(tmp_path / "runs.db", ["old-1", "old-2", "recent", "live"])
    for name, days in (("old-1", 40), ("old-2", 31), ("recent", 2)):
        make_old(path, name, days)
    return path


def test_delete_removes_the_run_and_every_row_of_it(db: Path) -> None:
    before = rows_of(db, "old-1")
    assert all(n > 0 for t, n in before.items() if t != "partials"), before
    r = spikewatch("runs", "delete", "old-1", "--yes", "--db", str(db))
    assert (r.returncode, r.stdout.strip()) == (0, "deleted run 'old-1'"), r.stderr
    assert set(rows_of(db, "old-1").values()) == {0}
    assert run_names(db) == {"old-2", "recent", "live"}
    assert rows_of(db, "old-2") == before  # the others keep everything


def test_delete_refuses_unknown_active_and_unconfirmed(db: Path) -> None:
    r = spikewatch("runs", "delete", "nope", "--yes", "--db", str(db))
    assert (r.returncode, r.stderr.strip()) == (1, "spikewatch: unknown run 'nope'")
    r = spikewatch("runs", "delete", "live", "--yes", "--db", str(db))
    assert r.returncode == 1
    assert "is active" in r.stderr
    assert "--force" in r.stderr
    r = spikewatch("runs", "delete", "old-1", "--db", str(db))  # stdin is no terminal
    assert r.returncode == 2
    assert "without --yes" in r.stderr
    assert run_names(db) == {"old-1", "old-2", "recent", "live"}
    r = spikewatch("runs", "delete", "live", "--yes", "--force", "--db", str(db))
    assert r.returncode == 0, r.stderr
    assert run_names(db) == {"old-1", "old-2", "recent"}


def test_prune_dry_run_lists_then_prune_deletes_the_old_runs(db: Path) -> None:
    r = spikewatch("runs", "prune", "--older-than", "30d", "--dry-run", "--db", str(db))
    assert r.returncode == 0, r.stderr
    assert "old-1" in r.stdout
    assert "old-2" in r.stdout
    assert "recent" not in r.stdout
    assert "would delete 2 run(s) last seen more than 30d ago" in r.stdout
    assert len(run_names(db)) == 4
    # options given to `runs` itself count as well
    r = spikewatch("runs", "--db", str(db), "prune", "--older-than", "30d", "--yes", "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(x["name"] for x in json.loads(r.stdout)) == ["old-1", "old-2"]
    assert run_names(db) == {"recent", "live"}
    r = spikewatch("runs", "prune", "--older-than", "1w", "--yes", "--db", str(db))
    assert (r.returncode, r.stdout.strip()) == (0, "no runs last seen more than 1w ago")


def test_prune_keeps_active_runs_unless_forced(db: Path) -> None:
    r = spikewatch("runs", "prune", "--older-than", "0s", "--yes", "--db", str(db))
    assert r.returncode == 0, r.stderr
    assert "keeping 1 active run(s)" in r.stderr
    assert run_names(db) == {"live"}
    r = spikewatch("runs", "prune", "--older-than", "0s", "--yes", "--force", "--db", str(db))
    assert r.returncode == 0, r.stderr
    assert run_names(db) == set()


@pytest.mark.parametrize(("text", "seconds"), [("30d", 30 * 86400.0), ("12h", 43200.0),
                                               ("1.5m", 90.0), ("2w", 14 * 86400.0)])
def test_ages(text: str, seconds: float) -> None:
    assert parse_age(text).seconds == seconds


def test_a_bad_age_is_a_usage_error(db: Path) -> None:
    r = spikewatch("runs", "prune", "--older-than", "30", "--db", str(db))
    assert r.returncode == 2
    assert "is not an age" in r.stderr


# --- through a real server ------------------------------------------------------------------------


@pytest.fixture
def srv(db: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    with server(db, tmp_path / "srv") as s:
        yield s


def test_through_the_api_delete_needs_the_admin_scope_and_prune_goes_run_by_run(
        db: Path, srv: ServerProcess) -> None:
    r = spikewatch("runs", "delete", "old-1", "--yes", "--url", srv.http, "--token", READ)
    assert r.returncode == 1, r.stderr
    assert "admin" in r.stderr
    assert "old-1" in run_names(db)
    r = spikewatch("runs", "delete", "old-1", "--yes", "--url", srv.http,
                   env={"SPIKEWATCH_API_TOKEN": ADMIN})
    assert r.returncode == 0, r.stderr
    assert set(rows_of(db, "old-1").values()) == {0}
    r = spikewatch("runs", "prune", "--older-than", "1d", "--yes", "--url", srv.http,
                   "--token", ADMIN)
    assert (r.returncode, r.stdout.strip()) == (0, "deleted 2 run(s) last seen more than 1d ago")
    listed = spikewatch("runs", "--json", "--url", srv.http, "--token", READ)
    assert [x["name"] for x in json.loads(listed.stdout)] == ["live"]


def test_the_delete_route_keeps_active_runs_without_force(srv: ServerProcess, db: Path) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    url = f"{srv.api_url}/runs/live"
    assert httpx.delete(url, headers={"Authorization": f"Bearer {READ}"}).status_code == 403
    assert httpx.delete(url).status_code == 401
    r = httpx.delete(url, headers=admin)
    assert r.status_code == 409
    assert "force" in r.json()["detail"]
    assert httpx.delete(f"{srv.api_url}/runs/nope", headers=admin).status_code == 404
    assert httpx.delete(url, params={"force": "true"}, headers=admin).status_code == 204
    assert "live" not in run_names(db)
    assert httpx.get(url, headers=admin).status_code == 404
