"""Resident memory of a live process, read from /proc (Linux); 0 where unreadable."""

from __future__ import annotations

from pathlib import Path

__all__ = ["peak_rss_bytes", "rss_bytes"]


def _status_bytes(pid: int | str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_bytes(pid: int | str = "self") -> int:
    """VmRSS: resident set size now, in bytes."""
    return _status_bytes(pid, "VmRSS:")


def peak_rss_bytes(pid: int | str = "self") -> int:
    """VmHWM: peak resident set size so far, in bytes."""
    return _status_bytes(pid, "VmHWM:")
