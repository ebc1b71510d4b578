"""Helpers every test folder needs to run real programs: a free local port, an installed binary."""

from __future__ import annotations

import shutil
import socket

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def program(*names: str) -> str:
    """Absolute path of the first installed program among `names`, or skip the test."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"{' / '.join(names)} is not installed (Debian: make system-deps)")
