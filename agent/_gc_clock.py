"""The agent's clock: `time.perf_counter` that stops while Python's garbage collector runs.

The agent times its own work to keep within its overhead budget. A full collection walks every
object of the process: with a large framework imported (a tracker, a tokenizer library, a dataset
in Python objects) it takes 100-300 ms, and it runs in whichever code happens to allocate at that
moment, often the agent's drain. Charged to the agent, one such pause makes a 25-step window of a
50 ms step look like 10 % overhead, and the budget stretches the predictor until it misses the
crossing it exists to see (a seed run lost its page this way after W&B, MLflow and TensorBoard
were imported into the process). The pause is the heap's cost, not the agent's: this clock leaves
it out (the agent's own share of allocation pressure is part of the untimed factor the scheduler
budgets for, `agent._scheduler.UNTIMED`). Collections in other threads stop this one too: they
hold the interpreter, so the timed code was not running either.
"""

from __future__ import annotations

import gc
import time
from typing import Any

_spent = 0.0  # seconds spent in collections since `install`
_started: float | None = None
_installed = False


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    global _spent, _started
    if phase == "start":
        _started = time.perf_counter()
    elif _started is not None:
        _spent += time.perf_counter() - _started
        _started = None


def install() -> None:
    """Start counting collection time (once per process; a callback per collection, ~1 µs)."""
    global _installed
    if not _installed:
        gc.callbacks.append(_on_gc)
        _installed = True


def now() -> float:
    """Seconds, like `time.perf_counter`, less the time spent in garbage collection."""
    return time.perf_counter() - _spent
