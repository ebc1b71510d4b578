"""Fixtures shared by the agent tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.agent._peer import Peer


@pytest.fixture
def peer() -> Iterator[Peer]:
    """A real ZeroMQ test peer on 127.0.0.1, stopped after the test."""
    with Peer() as p:
        yield p
