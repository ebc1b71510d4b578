"""Progress bars of the real CLI: `backtest` draws one on stderr when stderr is a terminal (a
pseudo-terminal here), and prints exactly the same on stdout; piped or with --json, nothing
extra."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server._cli import ROOT, SOURCE_ENVS, database, spikewatch


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return database(tmp_path_factory.mktemp("progress") / "progress.db")


def _with_terminal_stderr(*args: str) -> tuple[int, str, str]:
    """Run the CLI with stdout piped and stderr on a pseudo-terminal; (status, stdout, what the
    terminal received)."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in SOURCE_ENVS}
    env.update(PYTHONPATH=str(ROOT), TERM="xterm", COLUMNS="100")
    with subprocess.Popen([sys.executable, "-m", "spikewatch.server.cli", *args],
                          stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
                          env=env, cwd=ROOT, text=True) as proc:
        os.close(slave)
        terminal = b""
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            terminal += chunk
        out = proc.stdout.read() if proc.stdout else ""
        status = proc.wait(timeout=60)
    os.close(master)
    return status, out, terminal.decode(errors="replace")


def test_backtest_draws_a_bar_on_a_terminal_only(db: Path) -> None:
    piped = spikewatch("backtest", "--run", "spiky-run", "--db", str(db))
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""
    status, out, terminal = _with_terminal_stderr("backtest", "--run", "spiky-run",
                                                  "--db", str(db))
    assert status == 0, terminal
    assert "replaying spiky-run" in terminal
    assert out == piped.stdout  # the report is the same; the bar went to the terminal
    status, out, terminal = _with_terminal_stderr("backtest", "--run", "spiky-run", "--json",
                                                  "--db", str(db))
    assert status == 0, terminal
    assert terminal == ""
    assert out.startswith("{")
