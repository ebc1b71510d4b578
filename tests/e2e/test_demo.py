"""`make demo` (scripts/demo.py) as a user runs it: it prints the `spikewatch` commands a user types
and the run page, then either stops its server and says so (--no-wait, or stdin not a terminal,
as in CI) or keeps it, with the page, up until Ctrl-C (stdin a terminal)."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, str(ROOT / "scripts" / "demo.py"), "--steps", "100", "--pace-ms", "0"]
COMMANDS = ("spikewatch runs", "spikewatch alerts --run demo", "spikewatch report demo",
            "spikewatch tail demo")


def _server_pid(out: str) -> int:
    found = re.search(r"the server \(pid (\d+)\)", out) or re.search(r"server \(pid (\d+)\)", out)
    assert found, out
    return int(found.group(1))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("how", ["--no-wait", "stdin not a terminal"])
def test_without_a_terminal_the_demo_prints_the_commands_and_stops_its_server(
        tmp_path: Path, how: str) -> None:
    args = [*DEMO, "--dir", str(tmp_path)] + (["--no-wait"] if how == "--no-wait" else [])
    done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=110, check=False)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for command in COMMANDS:
        assert re.search(rf"^ .*\b{re.escape(command)}$", out, re.M), (command, out)
    db = tmp_path / "spikewatch.db"
    assert f"export SPIKEWATCH_DB=sqlite:///{db}" in out
    assert re.search(r"open http://127\.0\.0\.1:\d+/runs/demo$", out, re.M), out
    assert "python -m" not in out
    why = "--no-wait" if how == "--no-wait" else "stdin is not a terminal"
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(rf"spikewatch demo: the server \(pid \d+\) is stopped \({why}\); .*", last)
    assert _gone(_server_pid(last))
    assert db.is_file()


def test_from_a_terminal_the_server_and_its_page_stay_up_until_ctrl_c(tmp_path: Path) -> None:
    terminal, tty = pty.openpty()  # the demo's stdin is a terminal; its output is read here
    proc = subprocess.Popen([*DEMO, "--dir", str(tmp_path)], stdin=tty, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    os.close(tty)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any("Press Ctrl-C" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        out = "".join(lines)
        page = re.search(r"run page +(http://127\.0\.0\.1:\d+)/runs/demo$", out, re.M)
        assert page, out
        url = re.search(r"export SPIKEWATCH_URL=(\S+)", out)
        assert url, out
        assert url.group(1) == page.group(1)
        for command in COMMANDS:
            assert re.search(rf"^ .*\b{re.escape(command)}$", out, re.M), (command, out)
        time.sleep(1.0)  # the demo has finished: the server still answers
        assert httpx.get(f"{page.group(1)}/api/v1/runs/demo", timeout=5).status_code == 200
        pid = _server_pid(out)
        proc.send_signal(signal.SIGINT)  # Ctrl-C (the server has its own session)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, rest
        assert "Ctrl-C: stopping the server" in rest
        assert re.search(rf"the server \(pid {pid}\) is stopped; its run page is gone", rest)
        assert _gone(pid)
        lines.clear()  # stopped as it should be: nothing to clean up
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(terminal)
        _stop_leftover_server("".join(lines))


def _stop_leftover_server(out: str) -> None:
    """A failed run must not leave the demo's server (its own session) holding its ports for
    the next test or run."""
    found = re.search(r"server \(pid (\d+)\)", out)
    if found and not _gone(int(found.group(1))):
        os.kill(int(found.group(1)), signal.SIGKILL)
