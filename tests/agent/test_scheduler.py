"""Profiles, cadences and budget enforcement, timed with an injected clock (never wall time)."""

from __future__ import annotations

import math
from types import MappingProxyType

import pytest

from spikewatch.agent._profiles import (
    ALIGNMENT,
    CURVATURE,
    FIXED,
    HPARAMS,
    LAMBDA_MAX,
    LOGITS,
    LOSS,
    PRECOND,
    PROBES,
    PROFILES,
    TWO_SECANT,
    Profile,
)
from spikewatch.agent._scheduler import Report, Scheduler


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _profile(**cadences: int) -> Profile:
    return Profile("test", MappingProxyType(dict.fromkeys(PROBES, 0) | cadences), drain_every=10)


def _steps(s: Scheduler, clock: FakeClock, n: int, step_s: float, costs: dict[str, float],
           start: int = 0) -> None:
    """n training steps of `step_s` seconds; each due probe costs `costs[probe]` seconds."""
    for step in range(start, start + n):
        clock.t += step_s
        for probe, cost in costs.items():
            if s.due(probe, step):
                with s.measure(probe):
                    clock.t += cost
        s.step_end()


def test_profiles_order_cost() -> None:
    light, default, full = (PROFILES[n] for n in ("light", "default", "full"))
    for probe in PROBES:
        lc, dc, fc = (p.cadences[probe] for p in (light, default, full))
        if fc == 0:
            continue
        assert fc <= dc or dc == 0, probe
        assert dc <= lc or lc == 0, probe
    assert light.cadences[LAMBDA_MAX] == 0  # no extra-pass eigen-solver in the light profile
    assert default.drain_every > full.drain_every


def test_profile_validation() -> None:
    with pytest.raises(ValueError, match="unknown probes"):
        Profile("x", {"nope": 1}, 1)
    with pytest.raises(ValueError, match="drain_every"):
        Profile("x", {LOSS: 1}, 0)


def test_due_is_aligned_to_the_step_number() -> None:
    s = Scheduler(_profile(curvature=4, precond=1), 0.01, clock=FakeClock())
    assert [t for t in range(12) if s.due(CURVATURE, t)] == [0, 4, 8]
    assert all(s.due(PRECOND, t) for t in range(5))
    assert not any(s.due(LAMBDA_MAX, t) for t in range(5))  # cadence 0 = off


def test_over_budget_stretches_the_costly_probe_by_powers_of_two() -> None:
    clock = FakeClock()
    s = Scheduler(_profile(curvature=1, precond=1, loss=1), 0.01, clock=clock)
    _steps(s, clock, 10, 0.100, {CURVATURE: 0.005, PRECOND: 0.0001})
    r = s.adjust()
    assert r is not None
    # measured: 10 × 5.1 ms of agent work over 10 × 100 ms of training
    assert r.overhead == pytest.approx(0.051, rel=1e-6)
    assert r.step_time == pytest.approx(0.100, rel=1e-6)
    # 5 ms / cadence must fit into what the budget leaves: 1 ms − 0.1 ms (precond) → 8
    assert s.cadence(CURVATURE) == 8
    assert s.cadence(PRECOND) == 1
    assert s.cadence(LOSS) == 1
    _steps(s, clock, 16, 0.100, {CURVATURE: 0.005, PRECOND: 0.0001}, start=10)
    r2 = s.adjust()
    assert r2 is not None
    assert r2.overhead <= 0.01
    assert r2.cadences[CURVATURE] == 8
    assert r2.probe_overhead[CURVATURE] == pytest.approx(0.005 / 8 / 0.1, rel=1e-6)


def test_cadence_relaxes_back_when_the_probe_gets_cheap() -> None:
    clock = FakeClock()
    s = Scheduler(_profile(curvature=2), 0.01, clock=clock)
    _steps(s, clock, 8, 0.100, {CURVATURE: 0.010})
    s.adjust()
    stretched = s.cadence(CURVATURE)
    assert stretched == 16  # 10 ms per run must average ≤ 1 ms per 100 ms step
    for k in range(12):  # the probe is now nearly free: the cost EMA decays, cadence halves back
        _steps(s, clock, stretched, 0.100, {CURVATURE: 1e-6}, start=1000 * (k + 1))
        s.adjust()
    assert s.cadence(CURVATURE) == 2  # back to the profile's, never below it


def test_within_budget_nothing_changes() -> None:
    clock = FakeClock()
    s = Scheduler(PROFILES["default"], 0.5, clock=clock)
    _steps(s, clock, 25, 0.100, {PRECOND: 0.001, CURVATURE: 0.002})
    r = s.adjust()
    assert r is not None
    assert r.cadences == dict(PROFILES["default"].cadences)


def _settled_precond_cadence(cost: float, *, untimed: float = 1.0, headroom: float = 1.0) -> int:
    """The precond cadence after one window of 10 steps of 100 ms, each spending `cost` s on
    precond (cadence 1), under a 1% budget."""
    clock = FakeClock()
    s = Scheduler(_profile(precond=1), 0.01, clock=clock, untimed=untimed, headroom=headroom)
    _steps(s, clock, 10, 0.100, {PRECOND: cost})
    r = s.adjust()
    assert r is not None
    assert r.overhead == pytest.approx(cost / 0.100, rel=1e-6)  # the report stays the timed cost
    return r.cadences[PRECOND]


def test_untimed_factor_budgets_for_cost_the_clock_cannot_see() -> None:
    """Timed 0.7% of step time fits a 1% budget, unless the true cost is 1.5× the timed one."""
    assert _settled_precond_cadence(0.0007, untimed=1.0) == 1
    assert _settled_precond_cadence(0.0007, untimed=1.5) == 2
    with pytest.raises(ValueError, match="untimed"):
        Scheduler(_profile(precond=1), 0.01, untimed=0.5)


def test_headroom_plans_for_a_share_of_the_budget() -> None:
    """Timed 0.8% fits a 1% budget planned in full, not one planned at 75%."""
    assert _settled_precond_cadence(0.0008, headroom=1.0) == 1
    assert _settled_precond_cadence(0.0008, headroom=0.75) == 2
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="headroom"):
            Scheduler(_profile(precond=1), 0.01, headroom=bad)


def test_unmeasured_lists_scheduled_probes_that_have_not_run() -> None:
    clock = FakeClock()
    s = Scheduler(_profile(loss=1, precond=1, curvature=4), 0.01, clock=clock)
    assert s.unmeasured() == [PRECOND, CURVATURE]  # loss is fixed: never stretched, never costed
    _steps(s, clock, 1, 0.1, {PRECOND: 0.001, CURVATURE: 0.002})
    # the first step's runs built the probes' state: setup, not a measure of their cost
    assert s.unmeasured() == [PRECOND, CURVATURE]
    _steps(s, clock, 4, 0.1, {PRECOND: 0.001, CURVATURE: 0.002}, start=1)
    assert s.unmeasured() == []


def test_fixed_probes_and_no_stretch_mode() -> None:
    clock = FakeClock()
    s = Scheduler(_profile(loss=1, hparams=1), 0.01, clock=clock)
    _steps(s, clock, 5, 0.010, {LOSS: 0.01, HPARAMS: 0.01})
    s.adjust()
    assert {s.cadence(p) for p in FIXED} == {1}
    clock2 = FakeClock()
    s2 = Scheduler(_profile(curvature=1), 0.01, clock=clock2, stretch=False)
    _steps(s2, clock2, 5, 0.010, {CURVATURE: 0.01})
    r = s2.adjust()
    assert r is not None
    assert r.overhead == pytest.approx(1.0)
    assert s2.cadence(CURVATURE) == 1  # sharded jobs keep ranks aligned: no stretching


def test_setup_before_first_step_is_not_overhead() -> None:
    clock = FakeClock()
    s = Scheduler(_profile(curvature=1), 0.01, clock=clock)
    assert s.adjust() is None
    with s.measure(None):
        clock.t += 5.0  # attach-time work
    s.step_end()
    _steps(s, clock, 4, 0.1, {})
    r = s.adjust()
    assert r is not None
    assert r.overhead == 0.0


def test_disable_turns_a_probe_off() -> None:
    s = Scheduler(_profile(curvature=1), 0.01, clock=FakeClock())
    s.disable(CURVATURE)
    assert not s.due(CURVATURE, 0)
    assert s.cadence(CURVATURE) == 0


def test_fixed_cost_over_budget_does_not_starve_the_probes() -> None:
    clock = FakeClock()
    s = Scheduler(_profile(curvature=1, loss=1), 0.01, clock=clock)
    for _step in range(10):
        clock.t += 0.100
        with s.measure(None):  # hooks and drains: 2 ms per step, twice the whole budget
            clock.t += 0.002
        with s.measure(CURVATURE):
            clock.t += 0.001
        s.step_end()
    r = s.adjust()
    assert r is not None
    assert r.overhead == pytest.approx(0.03, rel=1e-6)
    # the probes keep a quarter of the 1 ms budget: 1 ms per run / 4 = 0.25 ms per step
    assert s.cadence(CURVATURE) == 4


def test_runs_of_one_step_and_follow_ups_form_one_cost_sample() -> None:
    clock = FakeClock()
    s = Scheduler(_profile(two_secant=4, precond=1), math.inf, clock=clock)  # never stretch
    s.step_end()  # the first mark: what runs before it is setup
    for step in range(8):
        clock.t += 0.1
        if s.due(PRECOND, step):  # a pre and a post part in the same step: 2 + 1 ms
            s.add(PRECOND, 0.002)
            s.add(PRECOND, 0.001)
        if s.due(TWO_SECANT, step):
            s.add(TWO_SECANT, 0.003)  # the run at the due step ...
        elif s.due(TWO_SECANT, step - 1):
            s.add(TWO_SECANT, 0.001, follow=True)  # ... and the one it asked for after it
        s.step_end()
    r = s.adjust()
    assert r is not None
    assert r.probe_overhead[PRECOND] * r.step_time == pytest.approx(0.003, rel=1e-6)
    per_run = r.probe_overhead[TWO_SECANT] * r.step_time * s.cadence(TWO_SECANT)
    assert per_run == pytest.approx(0.004, rel=1e-6)


def test_every_other_probe_yields_before_the_predictor() -> None:
    """The predictor keeps its profile cadence while it fits the budget itself (not the planning
    line below it); the diagnostics share what it leaves."""
    clock = FakeClock()
    s = Scheduler(_profile(two_secant=1, precond=2, alignment=2, curvature=2), 0.01, clock=clock,
                  headroom=0.75)
    costs = {TWO_SECANT: 0.0006, PRECOND: 0.0004, ALIGNMENT: 0.004, CURVATURE: 0.008}
    _steps(s, clock, 8, 0.100, costs)
    s.adjust()
    # 1 ms per step allowed, planned at 0.75 ms: the predictor's 0.6 ms/step stays; the others
    # share the 0.15 ms left below the planning line
    assert s.cadence(TWO_SECANT) == 1
    assert s.degraded() == {}
    load = sum(costs[p] / s.cadence(p) for p in (PRECOND, ALIGNMENT, CURVATURE))
    assert load <= 0.00015
    assert min(s.cadence(p) for p in (PRECOND, ALIGNMENT, CURVATURE)) > 2


def test_a_predictor_over_the_whole_budget_is_stretched_and_reported() -> None:
    clock = FakeClock()
    s = Scheduler(_profile(two_secant=1, alignment=100), 0.01, clock=clock)
    _steps(s, clock, 8, 0.100, {TWO_SECANT: 0.0025, ALIGNMENT: 0.001})
    s.adjust()
    assert s.cadence(TWO_SECANT) == 1  # one window over the budget: patience
    _steps(s, clock, 8, 0.100, {TWO_SECANT: 0.0025, ALIGNMENT: 0.001}, start=8)
    s.adjust()
    # 2.5 ms per step against a 1 ms budget, twice in a row: doubled until it fits
    assert s.cadence(TWO_SECANT) == 4
    assert s.degraded() == {TWO_SECANT: 4}
    assert s.cadence(ALIGNMENT) >= 100
    for k in range(12):  # it gets cheap: back to every step, and no longer reported
        _steps(s, clock, 64, 0.100, {TWO_SECANT: 1e-6, ALIGNMENT: 0.001}, start=1000 * (k + 1))
        s.adjust()
    assert s.cadence(TWO_SECANT) == 1
    assert s.degraded() == {}


def test_work_inside_compiled_graphs_is_charged_from_step_times() -> None:
    """A compiled forward computes the logits probe's capture inside the user's graph, where no
    clock reaches: the due steps' excess over the median ordinary step is charged to the probe."""

    def window(tagged: bool) -> tuple[Scheduler, Report]:
        clock = FakeClock()
        s = Scheduler(_profile(logits=2), 0.01, clock=clock)
        for step in range(10):
            due = s.due(LOGITS, step)
            clock.t += 0.100 + (0.010 if due else 0.0)  # a due step's graph runs 10 ms longer
            if due:
                with s.measure(LOGITS):  # the measurement at the pre-step is timed: 0.1 ms
                    clock.t += 0.0001
            s.step_end(frozenset({LOGITS}) if due and tagged else frozenset())
        r = s.adjust()
        assert r is not None
        return s, r

    s, r = window(tagged=True)
    assert s.cost(LOGITS) == pytest.approx(0.0101, rel=1e-6)  # timed 0.1 ms + in-graph 10 ms
    assert r.step_time == pytest.approx(0.100, rel=1e-6)
    # the window is steps 1-9 (the first mark opens it): due steps 2, 4, 6, 8
    assert r.overhead == pytest.approx(4 * 0.0101 / 0.9, rel=1e-6)
    assert r.cadences[LOGITS] == 16  # 10.1 ms per run must average ≤ 1 ms per 100 ms step
    untagged, r0 = window(tagged=False)  # eager: nothing ran in a graph, the excess is the step's
    assert untagged.cost(LOGITS) == pytest.approx(0.0001, rel=1e-6)
    assert r0.cadences[LOGITS] == 2


def test_in_graph_cost_needs_ordinary_steps_to_compare_with() -> None:
    clock = FakeClock()
    s = Scheduler(_profile(logits=1), math.inf, clock=clock)  # every step is due and tagged
    for _ in range(10):
        clock.t += 0.100
        s.step_end(frozenset({LOGITS}))
    assert s.adjust() is not None
    assert s.cost(LOGITS) == 0.0


def test_one_bursty_window_does_not_stretch_the_predictor() -> None:
    """A window whose agent work spiked (a collection pause, a busy neighbour) between ordinary
    ones leaves the predictor every step."""
    clock = FakeClock()
    s = Scheduler(_profile(two_secant=1), 0.01, clock=clock)
    for k in range(6):
        burst = k % 2 == 1
        _steps(s, clock, 10, 0.100, {TWO_SECANT: 0.004 if burst else 0.0002}, start=10 * k)
        s.adjust()
        assert s.cadence(TWO_SECANT) == 1


def test_a_bursty_probe_is_costed_by_its_mean_call_whatever_call_ends_the_window() -> None:
    """The predictor computes four steps' readings at one call in four (a batch): three calls
    of 0.1 ms and one of 0.7 ms, 0.25 ms a step. The window closes at a drain, where it also
    computes: costed by that last call (an average weighted to the newest), it would look
    0.4+ ms a step and be stretched; costed by the window's mean call, it fits 0.3 ms a step."""
    clock = FakeClock()
    s = Scheduler(_profile(two_secant=1), 0.003, clock=clock, bursts={TWO_SECANT: 4})
    for window in range(4):
        for step in range(12):
            clock.t += 0.100
            with s.measure(TWO_SECANT):
                clock.t += 0.0007 if step % 4 == 3 else 0.0001
            s.step_end()
        s.adjust()
        # 0.25 ms (the first window's first call is setup, not a sample: 2.9 ms / 11 calls)
        assert 0.00025 <= s.cost(TWO_SECANT) <= 2.9e-3 / 11 + 1e-12, window
        assert s.cadence(TWO_SECANT) == 1


def test_a_predictor_stretched_by_costly_first_windows_comes_back_once_it_fits() -> None:
    """A job's first windows cost more (an lr warm-up takes the hyper-parameter watch's full
    path): the predictor is stretched. In steady state the agent's fixed part (0.4 ms) and the
    predictor (0.52 ms) fit a 1 ms budget at 92 %: it comes back to every step (with 20 % to
    spare asked, it stayed stretched for good)."""
    clock = FakeClock()
    s = Scheduler(_profile(two_secant=1), 0.01, clock=clock)

    def window(start: int, predictor: float) -> None:
        for step in range(start, start + 10):
            clock.t += 0.100
            with s.measure(None):  # hooks, drains: the fixed part
                clock.t += 0.0004
            if s.due(TWO_SECANT, step):
                with s.measure(TWO_SECANT):
                    clock.t += predictor
            s.step_end()
        s.adjust()

    for k in range(3):
        window(10 * k, 0.0009)
    assert s.cadence(TWO_SECANT) > 1
    assert s.degraded()
    for k in range(3, 40):
        window(10 * k, 0.00052)
    assert s.cadence(TWO_SECANT) == 1
    assert s.degraded() == {}
