"""Progress bars of long CLI commands (`backtest`, `runs prune`): rich, on stderr, only when stderr
is a terminal, so piped output and ``--json`` get nothing extra."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from rich.console import Console
from rich.progress import track as rich_track

T = TypeVar("T")


def track(items: Sequence[T], description: str, *, enabled: bool = True) -> Iterable[T]:
    """`items`, drawing a transient progress bar on stderr while they are consumed when `enabled`
    and stderr is a terminal."""
    console = Console(stderr=True)
    return rich_track(items, description, console=console, transient=True,
                      disable=not (enabled and console.is_terminal))
