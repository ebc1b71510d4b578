"""The agent's clock leaves garbage-collection pauses out of what the agent charges itself."""

from __future__ import annotations

import gc
import time

import pytest

from spikewatch.agent import _gc_clock as gc_clock
from spikewatch.agent._profiles import PROFILES
from spikewatch.agent._scheduler import Scheduler


def test_a_collection_does_not_advance_the_agent_clock() -> None:
    gc_clock.install()
    heap = [[i] for i in range(400_000)]  # containers the collector must walk
    wall0, agent0 = time.perf_counter(), gc_clock.now()
    gc.collect()
    wall, agent = time.perf_counter() - wall0, gc_clock.now() - agent0
    assert len(heap) == 400_000
    assert wall > 0.0
    assert agent < 0.5 * wall  # the pause is the heap's cost, not the timed code's


def test_plain_work_advances_it_like_perf_counter() -> None:
    gc_clock.install()
    wall0, agent0 = time.perf_counter(), gc_clock.now()
    time.sleep(0.05)
    assert gc_clock.now() - agent0 == pytest.approx(time.perf_counter() - wall0, abs=0.01)


def test_the_scheduler_uses_it_unless_given_a_clock() -> None:
    assert Scheduler(PROFILES["default"], 0.01)._clock is gc_clock.now
    fixed = Scheduler(PROFILES["default"], 0.01, clock=lambda: 1.0)
    assert fixed.now() == 1.0
