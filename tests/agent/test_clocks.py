"""The agent's clocks: the step in wall time, the agent's work in its thread's processor time,
both less garbage-collection pauses."""

from __future__ import annotations

import gc
import threading
import time

import pytest

from spikewatch.agent import _clocks as clocks
from spikewatch.agent._profiles import PROFILES
from spikewatch.agent._scheduler import Scheduler


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_collection_advances_neither_clock() -> None:
    clocks.install()
    heap = [[i] for i in range(400_000)]  # containers the collector must walk
    wall0, now0, busy0 = time.perf_counter(), clocks.now(), clocks.busy()
    gc.collect()
    wall = time.perf_counter() - wall0
    assert len(heap) == 400_000
    assert wall > 0.0
    assert clocks.now() - now0 < 0.5 * wall  # the pause is the heap's cost, not the timed code's
    assert clocks.busy() - busy0 < 0.5 * wall


def test_waiting_advances_the_wall_clock_not_the_work_clock() -> None:
    clocks.install()
    wall0, now0, busy0 = time.perf_counter(), clocks.now(), clocks.busy()
    time.sleep(0.05)  # descheduled: the neighbours' time, not the agent's work
    assert clocks.now() - now0 == pytest.approx(time.perf_counter() - wall0, abs=0.01)
    assert clocks.busy() - busy0 < 0.01


def test_work_advances_the_work_clock() -> None:
    busy0 = clocks.busy()
    _spin(0.05)
    assert clocks.busy() - busy0 > 0.02  # processor time, even on a loaded machine


def test_a_thread_waiting_for_the_interpreter_is_not_charged() -> None:
    out: list[float] = []

    def timed() -> None:
        t0 = clocks.busy()
        time.sleep(0.001)
        for _ in range(200):  # each iteration waits for the interpreter the spinner holds
            time.sleep(0)
        out.append(clocks.busy() - t0)

    spinner = threading.Thread(target=_spin, args=(0.3,))
    spinner.start()
    t = threading.Thread(target=timed)
    wall0 = time.perf_counter()
    t.start()
    t.join(timeout=10)
    spinner.join(timeout=10)
    assert out
    assert out[0] < 0.5 * (time.perf_counter() - wall0)


def test_the_scheduler_times_steps_by_the_wall_and_its_work_by_the_thread() -> None:
    s = Scheduler(PROFILES["default"], 0.01)
    assert s._clock is clocks.now
    assert s._work is clocks.busy
    fixed = Scheduler(PROFILES["default"], 0.01, clock=lambda: 1.0)  # one injected clock: both
    assert fixed.now() == 1.0


def test_descheduled_agent_work_is_not_charged_to_the_agent() -> None:
    """A probe that spends its wall time descheduled (a busy machine) costs the step nothing the
    agent caused: the window's overhead stays near zero and nothing is stretched."""
    s = Scheduler(PROFILES["default"], 0.01)
    s.step_end()
    for _ in range(10):
        with s.measure("two_secant"):
            time.sleep(0.002)  # wall time of the "work", none of it processor time
        _spin(0.01)  # the step's own work
        s.step_end()
    report = s.adjust()
    assert report is not None
    assert report.overhead < 0.05
    assert report.step_time > 0.01
    assert not s.degraded()
