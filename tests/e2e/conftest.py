"""Fixtures of the end-to-end tests: real programs on free 127.0.0.1 ports, killed in finalizers.

`procs` starts programs for one test module and stops them all at its end; `webhook` is an
http.server thread recording what Alertmanager delivers; `pg_server` is the real PostgreSQL of
tests/server/conftest.py (initdb into a temporary directory, one per test session).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e._procs import Procs, WebhookReceiver
from tests.server.conftest import PostgresServer, pg_server

__all__ = ["PostgresServer", "pg_server", "procs", "webhook"]


@pytest.fixture(scope="module")
def procs() -> Iterator[Procs]:
    """Programs started by one test module; all terminated (then killed) at its end."""
    p = Procs()
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookReceiver]:
    """A webhook receiver on 127.0.0.1 recording each delivery with its arrival time."""
    hook = WebhookReceiver()
    try:
        yield hook
    finally:
        hook.close()
