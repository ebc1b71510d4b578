"""Fixtures of the reliability tests: the server tests' SQLite and real PostgreSQL databases."""

from __future__ import annotations

from tests.server.conftest import db_url, pg_server, pg_url, sqlite_url

__all__ = ["db_url", "pg_server", "pg_url", "sqlite_url"]
