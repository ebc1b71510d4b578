"""The agent's two clocks: the step's wall time, and the processor time of the agent's own work.

The agent times its own work to keep within its overhead budget, and compares it with the step's
time. Two things inflate a wall-clock timing of that work without being its cost:

- **Garbage collection.** A full collection walks every object of the process: with a large
  framework imported (a tracker, a tokenizer library, a dataset in Python objects) it takes
  100-300 ms, and it runs in whichever code happens to allocate at that moment, often the agent's
  drain. Charged to the agent, one such pause makes a 25-step window of a 50 ms step look like
  10 % overhead, and the budget stretched the predictor until it missed the crossing it exists to
  see (a seed run lost its page this way after W&B, MLflow and TensorBoard were imported). The
  pause is the heap's cost; the agent's share of allocation pressure is part of the untimed
  factor the scheduler budgets for (`agent._scheduler.UNTIMED`).
- **A busy processor.** When more runnable threads than cores share the machine (data-loader
  workers, other jobs, the 12 runs of the early-warning benchmark on 2 cores) a thread is
  descheduled for milliseconds at a time. Wall time measured across such a gap charges the agent
  for the neighbours' work: the step's own time is paced by the device or by the data, so the
  agent's share grew with the contention and the budget stretched the predictor on exactly the
  busy machines users run on (the benchmark's predictor ran every step in 54 % of reports on a
  busy day, 96 % on a quiet one, with the same code).

So the step's time is wall time (`now`: `perf_counter` less collections), and the agent's work is
the processor time of the thread doing it (`busy`: `CLOCK_THREAD_CPUTIME_ID`, about 1 µs a call,
less this thread's collections). A thread waiting for the interpreter lock or descheduled does
not advance `busy`; work the agent hands to torch's intra-op pool is counted on the calling thread
only while it takes part or spins at the barrier, which is what it keeps from the step.

What this gives up: a training loop that is itself processor-bound on a contended machine gets a
share f of a core for its own work too, so its wall time grows by 1/f while the agent's processor
time does not, and the agent reports (and budgets) f times its wall-clock share. The jobs it is
made for are paced by a device or a data pipeline, where the wall clock overstated the agent's
share by 1/f instead (early-warning benchmark, 12 paced runs and 2 busy processes on 2 cores: the
predictor every step in 41 % of reports and recall 16/32 with wall time, 86 % and 28/32 with this).
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

_spent = 0.0  # wall seconds spent in collections since `install`, all threads
_started: float | None = None
_installed = False


class _ThreadGC(threading.local):
    """This thread's processor seconds spent in collections it ran."""

    spent = 0.0
    started: float | None = None


_thread = _ThreadGC()


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    global _spent, _started
    if phase == "start":
        _started = time.perf_counter()
        _thread.started = time.thread_time()
        return
    if _started is not None:
        _spent += time.perf_counter() - _started
        _started = None
    if _thread.started is not None:  # the callback runs in the collecting thread
        _thread.spent += time.thread_time() - _thread.started
        _thread.started = None


def install() -> None:
    """Start counting collection time (once per process; a callback per collection, ~1 µs)."""
    global _installed
    if not _installed:
        gc.callbacks.append(_on_gc)
        _installed = True


def now() -> float:
    """Wall seconds, like `time.perf_counter`, less the time spent in garbage collection."""
    return time.perf_counter() - _spent


def busy() -> float:
    """Processor seconds of the calling thread, less its garbage collections."""
    return time.thread_time() - _thread.spent
