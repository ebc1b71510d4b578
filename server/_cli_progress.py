"""Progress bars of long CLI commands (`backtest`, `runs prune`, the benchmarks): rich, on stderr,
only when stderr is a terminal, so piped output and ``--json`` get nothing extra."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from rich.console import Console
from rich.progress import track as rich_track

T = TypeVar("T")


def track(items: Iterable[T], description: str, *, enabled: bool = True,
          total: int | None = None, console: Console | None = None) -> Iterable[T]:
    """`items`, drawing a transient progress bar on stderr while they are consumed when `enabled`
    and stderr is a terminal (`total`: how many, for an iterator; lines printed meanwhile go
    through `console`, which must be the stderr console the bar draws on)."""
    console = console or Console(stderr=True)
    if total is None and isinstance(items, Sequence):
        total = len(items)
    return rich_track(items, description, total=total, console=console, transient=True,
                      disable=not (enabled and console.is_terminal))
