"""Headless Chromium for the page tests: found at $SPIKEWATCH_CHROMIUM or /usr/bin/chromium (the
Debian package 'chromium'), else the test is skipped; each run has its own profile and is killed
on time-out."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("SPIKEWATCH_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_chromium() -> None:
    """Skip the test, saying why, when Chromium is not installed."""
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip(f"chromium not installed at {CHROMIUM} (Debian package 'chromium')")


def chromium(*args: str, profile: Path, timeout: float = 90) -> str:
    """Run headless Chromium; its stdout. The whole process group is killed on timeout."""
    require_chromium()
    cmd = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        pytest.fail(f"chromium did not finish within {timeout} s: {' '.join(args)}")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err[-2000:]}"
    return out
