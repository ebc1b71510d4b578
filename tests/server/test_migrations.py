"""Alembic migrations on SQLite and PostgreSQL: up, down to base, up again; schema = models."""

from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from spikewatch.protocol import wire
from spikewatch.server.store import Store
from spikewatch.server.store._models import metadata

TABLES = {"runs", "sessions", "scalars", "layer_values", "histograms", "events", "partials",
          "latest", "alerts"}


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    store = Store(db_url)
    assert store.current() is None
    assert not store.at_head()
    store.upgrade()
    assert store.current() == "0001"
    assert store.at_head()
    assert tables(db_url) == TABLES
    store.write(wire.Hello(wire.Header(uuid.uuid4().hex, 1, "r"), {"a": 1}))
    store.downgrade("base")
    assert store.current() is None
    assert tables(db_url) == set()
    store.upgrade()
    assert tables(db_url) == TABLES
    assert store.list_runs() == []
    res = store.write(wire.Hello(wire.Header(uuid.uuid4().hex, 1, "r"), {"a": 1}))
    assert not res.duplicate
    assert [r.name for r in store.list_runs()] == ["r"]
    store.close()


def test_migrated_schema_matches_models(db_url: str) -> None:
    store = Store(db_url)
    store.upgrade()
    engine = create_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                metadata)
    engine.dispose()
    store.close()
    assert diff == []


def test_upgrade_is_idempotent(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    store.upgrade()
    store.upgrade()
    assert store.current() == "0001"
    store.close()


def test_db_command(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from spikewatch.server.cli import main

    assert main(["db", "current", "--db", sqlite_url]) == 0
    assert "none (empty database)" in capsys.readouterr().out
    assert main(["db", "upgrade", "--db", sqlite_url]) == 0
    assert "revision 0001 (head)" in capsys.readouterr().out
    assert main(["db", "downgrade", "--db", sqlite_url]) == 2  # needs a revision
    assert "needs a revision" in capsys.readouterr().err
    assert main(["db", "downgrade", "base", "--db", sqlite_url]) == 0
    assert tables(sqlite_url) == set()
