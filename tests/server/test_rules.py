"""Rule semantics pinned on signal traces, and YAML validation errors."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spikewatch.protocol.wire import Scalar
from spikewatch.server.rules import Rule, RuleEngine, RuleError, load_rules, parse_rules
from spikewatch.server.rules._condition_model import AnyOf
from spikewatch.server.types import AlertState, Observation, Severity, Transition

P, F, R, X = AlertState.PENDING, AlertState.FIRING, AlertState.RESOLVED, AlertState.INACTIVE


@dataclass(frozen=True)
class Ev:
    type: str
    data: Mapping[str, Scalar] = field(default_factory=dict)


def rules(yaml_rules: str) -> list[Rule]:
    return parse_rules("rules:\n" + yaml_rules)


def replay(
    engine: RuleEngine,
    trace: Sequence[Mapping[str, float]],
    *,
    run: str = "r",
    start: int = 1,
    dt: float = 1.0,
    events: Mapping[int, Sequence[Ev]] | None = None,
) -> list[Transition]:
    out: list[Transition] = []
    for i, values in enumerate(trace):
        step = start + i
        evs = (events or {}).get(step, ())
        obs = Observation(run, step, 1000.0 + dt * i, values, tuple(e.type for e in evs))
        out += engine.observe(obs, evs)
    return out


def states(ts: Sequence[Transition]) -> list[tuple[str, AlertState, int]]:
    return [(t.rule, t.state, t.step) for t in ts]


SR = """
  - name: sr
    severity: page
    condition: {metric: stability_ratio, op: ">=", value: 1.0}
    for_steps: 3
"""


def sr(*xs: float) -> list[dict[str, float]]:
    return [{"stability_ratio": x} for x in xs]


def test_sustained_condition_goes_pending_firing_resolved() -> None:
    ts = replay(RuleEngine(rules(SR)), sr(0.5, 1.2, 1.3, 1.1, 1.4, 0.9, 0.8))
    assert states(ts) == [("sr", P, 2), ("sr", F, 4), ("sr", R, 6)]
    assert [t.value for t in ts] == [1.2, 1.1, 0.9]
    assert all(t.severity is Severity.PAGE and t.run == "r" for t in ts)


def test_replace_rules_keeps_kept_alerts_and_ends_removed_ones() -> None:
    loss = """
  - name: loss_high
    severity: warning
    condition: {metric: loss, op: ">", value: 5.0}
"""
    engine = RuleEngine(rules(SR + loss))
    ts = replay(engine, [{"stability_ratio": 1.2, "loss": 9.0}] * 3)
    assert states(ts) == [("sr", P, 1), ("loss_high", P, 1), ("loss_high", F, 1), ("sr", F, 3)]
    sr2 = SR.replace("value: 1.0", "value: 2.0")
    ended = engine.replace_rules(rules(sr2))
    assert states(ended) == [("loss_high", R, 3)]
    assert ended[0].annotations["resolved_by"] == "rule removed by a reload"
    assert [r.name for r in engine.rules] == ["sr"]
    # sr stayed firing across the reload (no new pending) and resolves under its new threshold
    assert states(replay(engine, sr(1.5), start=4)) == [("sr", R, 4)]
    with pytest.raises(RuleError, match="duplicate"):
        engine.replace_rules(rules(SR + SR))
    assert [r.name for r in engine.rules] == ["sr"]


def test_active_alerts_say_where_each_stands_and_follow_a_reloaded_severity() -> None:
    kept = SR.replace("for_steps: 3", "for_steps: 3\n    keep_firing_steps: 2")
    engine = RuleEngine(rules(kept))
    replay(engine, sr(0.5, 1.2, 1.3, 1.4, 1.5))
    (alert,) = engine.active()
    assert (alert.run, alert.rule, alert.state, alert.since_step, alert.fired_step,
            alert.value, alert.severity) == ("r", "sr", F, 2, 4, 1.5, Severity.PAGE)
    replay(engine, sr(0.9), start=6)
    assert [(a.state, a.failed) for a in engine.active()] == [(F, 1)]  # kept firing
    engine.replace_rules(rules(kept.replace("severity: page", "severity: warning")))
    assert [(a.state, a.severity) for a in engine.active()] == [(F, Severity.WARNING)]


def test_pending_that_clears_before_sustain_goes_inactive_and_restarts() -> None:
    ts = replay(RuleEngine(rules(SR)), sr(1.2, 1.3, 0.9, 1.0, 1.0, 1.0))
    assert states(ts) == [("sr", P, 1), ("sr", X, 3), ("sr", P, 4), ("sr", F, 6)]


def test_for_steps_one_fires_at_once_and_threshold_is_inclusive() -> None:
    eng = RuleEngine(rules(SR.replace("for_steps: 3", "for_steps: 1")))
    assert states(replay(eng, sr(0.99, 1.0, 1.0))) == [("sr", P, 2), ("sr", F, 2)]


def test_keep_firing_steps_bridges_short_dips() -> None:
    eng = RuleEngine(rules(SR.replace("for_steps: 3", "for_steps: 1\n    keep_firing_steps: 2")))
    ts = replay(eng, sr(1.1, 0.9, 0.9, 1.1, 0.9, 0.9, 0.9))
    assert states(ts) == [("sr", P, 1), ("sr", F, 1), ("sr", R, 7)]


def test_severity_grading_warning_on_short_crossing_page_only_when_sustained() -> None:
    graded = rules(
        """
  - name: crossing
    severity: warning
    condition: {metric: stability_ratio, op: ">=", value: 1.0}
    for_steps: 2
  - name: sustained
    severity: page
    condition: {metric: stability_ratio, op: ">=", value: 1.0}
    for_steps: 5
"""
    )
    short = replay(RuleEngine(graded), sr(0.9, 1.1, 1.1, 1.1, 0.9))
    assert [(t.rule, t.severity) for t in short if t.state is F] == [("crossing", Severity.WARNING)]
    long = replay(RuleEngine(graded), sr(0.9, *[1.1] * 6, 0.9))
    assert [(t.rule, t.step) for t in long if t.state is F] == [("crossing", 3), ("sustained", 6)]
    assert [(t.rule, t.step) for t in long if t.state is R] == [("crossing", 8), ("sustained", 8)]


def test_all_and_nested_any_composites() -> None:
    eng = RuleEngine(
        rules(
            """
  - name: combo
    severity: page
    condition:
      all:
        - {metric: stability_ratio, op: ">=", value: 1}
        - any:
            - {metric: rho, op: "<", value: 0.25}
            - {metric: sqrt_v_decay, op: ">", value: 1.5}
"""
        )
    )
    trace = [
        {"stability_ratio": 1.2, "rho": 0.5, "sqrt_v_decay": 1.0},  # any false → all false
        {"stability_ratio": 1.2, "rho": 0.1, "sqrt_v_decay": 1.0},  # true via rho
        {"stability_ratio": 1.3, "rho": 0.5, "sqrt_v_decay": 2.0},  # still true via decay
        {"stability_ratio": 0.8, "rho": 0.1, "sqrt_v_decay": 2.0},  # first leaf false
    ]
    ts = replay(eng, trace)
    assert states(ts) == [("combo", P, 2), ("combo", F, 2), ("combo", R, 4)]
    # the value is the first agreeing leaf: the ratio while all hold, the failing leaf otherwise
    assert [t.value for t in ts] == [1.2, 1.2, 0.8]


def test_event_conditions_with_and_without_data_filter() -> None:
    eng = RuleEngine(
        rules(
            """
  - name: jump
    severity: page
    condition: {event: momentum_jump, where: {rescaled: false}}
  - name: any_nan
    severity: page
    condition: {event: nonfinite}
"""
        )
    )
    events = {
        2: [Ev("momentum_jump", {"rescaled": True, "old": 0.9, "new": 0.97})],
        4: [Ev("momentum_jump", {"rescaled": False, "old": 0.9, "new": 0.97})],
        6: [Ev("momentum_jump", {"rescaled": 0})],  # numeric flag as sent by some encoders
        8: [Ev("momentum_jump")],  # no data: a filter cannot match
        9: [Ev("nonfinite", {"what": "grad"})],
    }
    ts = replay(eng, [{}] * 10, events=events)
    assert states(ts) == [
        ("jump", P, 4), ("jump", F, 4), ("jump", R, 5),
        ("jump", P, 6), ("jump", F, 6), ("jump", R, 7),
        ("any_nan", P, 9), ("any_nan", F, 9), ("any_nan", R, 10),
    ]  # fmt: skip
    # event types alone (Observation.events, no data) satisfy an unfiltered event condition
    plain = RuleEngine(rules("  - {name: n, severity: page, condition: {event: nonfinite}}\n"))
    out = plain.observe(Observation("r", 1, 0.0, {}, ("nonfinite",)))
    assert [t.state for t in out] == [P, F]


STALE = """
  - name: st
    severity: warning
    condition: {metric: stability_ratio, op: ">=", value: 1.0, stale_steps: STALE}
    for_steps: 4
"""


def cadence_trace() -> list[dict[str, float]]:
    # a probe on a cadence of 3 steps; the loss arrives every step
    return [{"loss": 1.0, **({"stability_ratio": 1.5} if i % 3 == 0 else {})} for i in range(9)]


def test_stale_metric_carries_its_last_value_up_to_stale_steps() -> None:
    carried = replay(RuleEngine(rules(STALE.replace("STALE", "2"))), cadence_trace())
    assert states(carried) == [("st", P, 1), ("st", F, 4)]  # sustained across steps without data
    short = replay(RuleEngine(rules(STALE.replace("STALE", "1"))), cadence_trace())
    # stale after one step: pending at each report, inactive two steps later, never firing
    expected = [(P, 1), (X, 3), (P, 4), (X, 6), (P, 7), (X, 9)]
    assert [(s, st) for _, s, st in states(short)] == expected


def test_absent_is_true_treats_a_missing_metric_as_holding() -> None:
    eng = RuleEngine(
        rules(
            """
  - name: silent
    severity: warning
    condition: {metric: sa_sign_diversity, op: "<", value: 0.1, stale_steps: 0, absent_is: true}
    for_steps: 2
"""
        )
    )
    ts = replay(eng, [{"sa_sign_diversity": 0.5}, {}, {}, {"sa_sign_diversity": 0.5}])
    assert states(ts) == [("silent", P, 2), ("silent", F, 3), ("silent", R, 4)]
    assert math.isnan(ts[0].value)


def test_for_seconds_uses_the_observation_clock() -> None:
    eng = RuleEngine(
        rules(
            """
  - name: slow
    severity: warning
    condition: {metric: max_prob, op: ">", value: 0.99}
    for_seconds: 10
"""
        )
    )
    clock = iter([0.0, 4.0, 9.9, 10.0, 11.0, 30.0])
    out = []
    for step, mp in enumerate([0.995, 0.995, 0.995, 0.995, 0.5, 0.995], start=1):
        out += eng.observe(Observation("r", step, next(clock), {"max_prob": mp}))
    assert states(out) == [("slow", P, 1), ("slow", F, 4), ("slow", R, 5), ("slow", P, 6)]
    assert out[1].time == 10.0


def test_for_steps_and_for_seconds_must_both_hold() -> None:
    eng = RuleEngine(
        rules(
            """
  - name: both
    severity: warning
    condition: {metric: max_prob, op: ">", value: 0.99}
    for_steps: 3
    for_seconds: 5
"""
        )
    )
    fast = replay(eng, [{"max_prob": 1.0}] * 6, run="fast", dt=1.0)  # steps needs 3, seconds 6
    slow = replay(eng, [{"max_prob": 1.0}] * 6, run="slow", dt=10.0)  # seconds met at step 2
    assert [t.step for t in fast if t.state is F] == [6]
    assert [t.step for t in slow if t.state is F] == [3]


def test_rate_ratio_to_min_over_previous_window() -> None:
    eng = RuleEngine(
        rules(
            """
  - name: spike
    severity: warning
    condition: {rate: loss, window_steps: 3, mode: ratio_to_min, op: ">", value: 2.0}
"""
        )
    )
    # the window is the previous 3 steps, the current one excluded
    # (step 6: 1.2 would be > 2 × 0.5, but step 2 has left the window)
    losses = [1.0, 0.5, 0.8, 1.1, 0.9, 1.2, 2.0, 0.5]
    ts = replay(eng, [{"loss": x} for x in losses])
    assert states(ts) == [("spike", P, 4), ("spike", F, 4), ("spike", R, 5),
                          ("spike", P, 7), ("spike", F, 7), ("spike", R, 8)]  # fmt: skip
    assert ts[1].value == pytest.approx(1.1 / 0.5)
    assert ts[4].value == pytest.approx(2.0 / 0.9)


def test_rate_per_step_min_points_and_nonpositive_reference() -> None:
    eng = RuleEngine(
        rules(
            """
  - name: climb
    severity: info
    condition: {rate: grad_norm, window_steps: 4, op: ">", value: 0.5, min_points: 2}
  - name: ratio
    severity: info
    condition: {rate: loss, window_steps: 2, mode: ratio_to_mean, op: ">", value: 1.5}
"""
        )
    )
    trace = [
        {"grad_norm": 1.0, "loss": 0.0},
        {"grad_norm": 1.0, "loss": -1.0},  # one point in the window: below min_points
        {"grad_norm": 2.2, "loss": 5.0},  # (2.2 − 1.0)/2 = 0.6 > 0.5; loss ref mean −0.5 ≤ 0
        {"grad_norm": 2.2, "loss": 10.0},  # (2.2 − 1.0)/3 = 0.4; loss 10/mean(−1, 5)=5
    ]
    ts = replay(eng, trace)
    assert states(ts) == [("climb", P, 3), ("climb", F, 3), ("climb", R, 4),
                          ("ratio", P, 4), ("ratio", F, 4)]  # fmt: skip
    assert ts[0].value == pytest.approx(0.6)
    assert ts[3].value == pytest.approx(5.0)


def test_nonfinite_metric_and_nan_values_never_satisfy_thresholds() -> None:
    eng = RuleEngine(
        rules(
            """
  - name: nan_loss
    severity: page
    condition: {nonfinite: loss}
  - name: high
    severity: warning
    condition: {metric: loss, op: ">", value: 10}
"""
        )
    )
    ts = replay(eng, [{"loss": 1.0}, {"loss": math.nan}, {"loss": math.inf}, {"loss": 2.0}])
    assert states(ts) == [("nan_loss", P, 2), ("nan_loss", F, 2), ("high", P, 3),
                          ("high", F, 3), ("nan_loss", R, 4), ("high", R, 4)]  # fmt: skip
    assert math.isnan(ts[0].value)
    assert ts[2].value == math.inf


def test_runs_are_independent_and_replay_is_deterministic() -> None:
    def interleaved() -> list[Transition]:
        eng = RuleEngine(rules(SR))
        out: list[Transition] = []
        for step in range(1, 6):
            out += eng.observe(Observation("a", step, float(step), {"stability_ratio": 1.5}))
            out += eng.observe(Observation("b", step, float(step), {"stability_ratio": 0.5}))
        return out

    first, second = interleaved(), interleaved()
    assert first == second
    assert {t.run for t in first} == {"a"}
    assert states(first) == [("sr", P, 1), ("sr", F, 3)]


def test_annotations_are_templated_and_labels_copied() -> None:
    eng = RuleEngine(
        rules(
            """
  - name: sr
    severity: page
    condition: {metric: stability_ratio, op: ">=", value: 1}
    labels: {team: ml}
    annotations:
      summary: "{run}: {rule} at step {step} value {value} ({severity}) {unknown} {{x}}"
"""
        )
    )
    t = eng.observe(Observation("job-1", 7, 0.0, {"stability_ratio": 1.23456789}))[-1]
    assert t.labels == {"team": "ml"}
    assert t.annotations["summary"] == "job-1: sr at step 7 value 1.235 (page) {unknown} {{x}}"


def test_idle_runs_are_forgotten_and_their_alerts_resolved() -> None:
    now = [0.0]
    eng = RuleEngine(rules(SR.replace("for_steps: 3", "for_steps: 1")), idle_seconds=60,
                     clock=lambda: now[0])  # fmt: skip
    eng.observe(Observation("old", 5, 0.0, {"stability_ratio": 2.0}))
    assert [(a.run, a.state) for a in eng.active()] == [("old", F)]
    now[0] = 61.0
    out = eng.observe(Observation("new", 1, 61.0, {"stability_ratio": 0.1}))
    assert [(t.run, t.state, t.step) for t in out] == [("old", R, 5)]
    assert out[0].annotations["resolved_by"] == "run idle"
    assert eng.runs() == 1
    assert eng.active() == []


def test_max_runs_evicts_least_recently_observed() -> None:
    eng = RuleEngine(rules(SR.replace("for_steps: 3", "for_steps: 2")), max_runs=2)
    for run in ("a", "b"):
        eng.observe(Observation(run, 1, 0.0, {"stability_ratio": 2.0}))
    eng.observe(Observation("a", 2, 1.0, {"stability_ratio": 2.0}))  # a is now most recent
    out = eng.observe(Observation("c", 1, 2.0, {"stability_ratio": 0.0}))
    assert [(t.run, t.state) for t in out] == [("b", X)]
    assert sorted((a.run, a.state) for a in eng.active()) == [("a", F)]
    assert eng.runs() == 2


def test_step_going_backwards_clears_rate_history() -> None:
    eng = RuleEngine(
        rules(
            """
  - name: spike
    severity: warning
    condition: {rate: loss, window_steps: 10, mode: ratio_to_min, op: ">", value: 2.0}
"""
        )
    )
    replay(eng, [{"loss": 0.1}] * 5, start=100)
    # the run resumed from an earlier checkpoint (resumed event): its old low losses must not count
    resumed = replay(eng, [{"loss": 1.0}, {"loss": 1.1}], start=95, events={95: [Ev("resumed")]})
    assert resumed == []
    # a step far further back than late_steps is a restart too
    replay(eng, [{"loss": 0.1}] * 5, start=300)
    assert replay(eng, [{"loss": 1.0}, {"loss": 1.1}], start=150) == []
    # without either, a step going back is late data, evaluated at the next observation
    late = replay(eng, [{"loss": 0.1}] * 3, start=400) + replay(eng, [{"loss": 0.5}], start=402)
    assert late == []
    ts = replay(eng, [{}], start=403)  # loss carried from the late value of step 402
    assert states(ts) == [("spike", P, 403), ("spike", F, 403)]
    assert ts[0].value == pytest.approx(5.0)


def test_late_observations_feed_the_next_evaluation() -> None:
    """A sharded metric combined after rank 0 moved on arrives as an observation of a past step."""
    eng = RuleEngine(
        rules(
            """
  - name: decay
    severity: info
    condition: {metric: rho, op: "<", value: 0.25, stale_steps: 5}
  - name: jump
    severity: page
    condition: {event: momentum_jump, where: {rescaled: false}}
"""
        )
    )
    out = eng.observe(Observation("r", 10, 10.0, {"loss": 1.0}))
    out += eng.observe(Observation("r", 11, 11.0, {"loss": 1.0}))
    # rank 1 completes step 10 late: the combined rho and a rank-1 event
    jump = Ev("momentum_jump", {"rescaled": False})
    out += eng.observe(Observation("r", 10, 10.0, {"rho": 0.1}, ("momentum_jump",)), [jump])
    assert out == []  # nothing evaluated at a past step
    out = eng.observe(Observation("r", 12, 12.0, {"loss": 1.0}))
    assert states(out) == [("decay", P, 12), ("decay", F, 12), ("jump", P, 12), ("jump", F, 12)]
    assert out[0].value == 0.1
    # carried from step 10 for stale_steps = 5: absent from step 16 on
    out = [t for s in range(13, 17) for t in eng.observe(Observation("r", s, float(s), {}))]
    assert states(out) == [("jump", R, 13), ("decay", R, 16)]


def test_to_dict_round_trips() -> None:
    import yaml

    original = load_rules()
    again = parse_rules(yaml.safe_dump({"rules": [r.to_dict() for r in original]}))
    assert again == original
    assert all(r.description for r in original)


# --- validation --------------------------------------------------------------------------------

BAD = [
    ("rules: []", "rules: must have at least 1 item"),
    ("- a\n- b", "must be a mapping"),
    ("rules: [{name: x, severity: page, condition: {metric: stabilty_ratio, op: '>', value: 1}}]",
     "rule 'x': condition.metric: unknown metric 'stabilty_ratio' "
     "(did you mean 'stability_ratio'?)"),
    ("rules: [{name: x, severity: critical, condition: {event: nonfinite}}]",
     "rule 'x': severity: must be 'info', 'warning' or 'page' (got 'critical')"),
    ("rules: [{name: x, severity: page, condition: {metric: loss, op: '=>', value: 1}}]",
     "rule 'x': condition.op: must be '>', '>=', '<' or '<=' (got '=>')"),
    ("rules: [{name: x, severity: page, condition: {metric: loss, op: '>'}}]",
     "rule 'x': condition.value: required"),
    ("rules: [{name: x, severity: page, condition: {metric: loss, op: '>', value: .nan}}]",
     "rule 'x': condition.value: must be a finite number (got nan)"),
    ("rules: [{name: x, severity: page, condition: {metric: loss, op: '>', value: '1'}}]",
     "rule 'x': condition.value: must be a valid number (got '1')"),
    ("rules: [{name: x, severity: page, for_step: 3, condition: {event: nonfinite}}]",
     "rule 'x': for_step: unknown key 'for_step' (did you mean 'for_steps'?)"),
    ("rules: [{name: x, severity: page, for_steps: 0, condition: {event: nonfinite}}]",
     "rule 'x': for_steps: must be greater than or equal to 1 (got 0)"),
    ("rules: [{name: x, severity: page, for_seconds: -1, condition: {event: nonfinite}}]",
     "rule 'x': for_seconds: must be greater than or equal to 0 (got -1)"),
    ("rules: [{name: x, severity: page}]", "rule 'x': condition: required"),
    ("rules: [{name: x, severity: page, condition: {event: nonfinite, metric: loss}}]",
     "rule 'x': condition: needs exactly one of"),
    ("rules: [{name: x, severity: page, condition: {event: explosion}}]",
     "rule 'x': condition.event: must be 'hparam_change', 'momentum_jump'"),
    ("rules: [{name: x, severity: page, condition: {event: momentum_jump, where: [1]}}]",
     "rule 'x': condition.where: must be a valid dictionary (got [1])"),
    ("rules: [{name: x, severity: page, condition: {any: [{metric: loss, op: '>', value: 1},"
     " {rate: loss, op: '>', value: 2}]}}]",
     "rule 'x': condition.any[1].window_steps: required"),
    ("rules: [{name: x, severity: page, condition: {rate: loss, window_steps: 5, mode: median,"
     " op: '>', value: 2}}]", "rule 'x': condition.mode: must be 'per_step', 'ratio_to_min'"),
    ("rules: [{name: x, severity: page, condition: {all: []}}]",
     "rule 'x': condition.all: must have at least 1 item"),
    ("rules: [{name: x, severity: page, condition: {all: [{any: [{all: [{any: [{all: "
     "[{event: nonfinite}]}]}]}]}]}}]", "rule 'x': condition: all/any nested deeper than 4"),
    ("rules: [{name: x, severity: page, condition: {nonfinite: loss, absent_is: maybe}}]",
     "rule 'x': condition.absent_is: must be a valid boolean (got 'maybe')"),
    ("rules: [{name: x, severity: page, labels: {run: a}, condition: {event: nonfinite}}]",
     "rule 'x': labels.run: reserved label"),
    ("rules: [{name: x, severity: page, labels: {team: 3}, condition: {event: nonfinite}}]",
     "rule 'x': labels.team: must be a valid string (got 3)"),
    ("rules: [{name: 'bad name', severity: page, condition: {event: nonfinite}}]",
     "rule '#1': name: must match pattern"),
    ("rules: [{name: x, severity: page, condition: {event: nonfinite}},"
     " {name: x, severity: info, condition: {event: nonfinite}}]", "rule 'x': name: duplicate"),
    ("rules:\n- name: x\n  severity: page\n  severity: info\n  condition: {event: nonfinite}",
     "invalid YAML: duplicate key 'severity'"),
    ("rules: [{name: x, severity: page, condition: {metric: my_metric, op: '>', value: 1}}]",
     "unknown metric 'my_metric'"),
    ("rules: [oops", "invalid YAML"),
    ("rulez: []", "rulez: unknown key 'rulez' (did you mean 'rules'?)"),
    ("extra_metrics: ['bad name']\n"
     "rules: [{name: x, severity: page, condition: {event: nonfinite}}]",
     "extra_metrics[0]: must match pattern"),
    ("rules: [{name: x, severity: page, condition: 5}]",
     "rule 'x': condition: needs exactly one of"),
    ("rules: [{name: x, severity: page, condition: {metric: loss, op: '>', value: 1, stale: 3}}]",
     "rule 'x': condition.stale: unknown key 'stale' (did you mean 'stale_steps'?)"),
    ("rules: [{name: x, severity: page, condition: {any: [{event: nonfinite},"
     " {event: momentum_jump, where: {rescaled: [1]}}]}}]",
     "rule 'x': condition.any[1].where.rescaled: must be null, true/false, a number or a string"),
    ("rules: [{name: x, severity: page, condition: {event: momentum_jump, where: {'a b': 1}}}]",
     "rule 'x': condition.where.a b: must match pattern"),
    ("rules: [{name: x, severity: page, condition: {rate: loss, window_steps: 5, min_points: 6,"
     " op: '>', value: 2}}]", "rule 'x': condition.min_points: must be at most window_steps (5)"),
    ("rules: [{name: x, severity: page, annotations: {__x: a}, condition: {event: nonfinite}}]",
     "rule 'x': annotations.__x: names starting with __ are Prometheus'"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_invalid_rule_files_name_the_rule_and_field(text: str, message: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_rules(text, source="team.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("team.yaml:")


def test_error_attributes_and_extra_metrics() -> None:
    with pytest.raises(RuleError) as err:
        parse_rules("rules: [{name: x, severity: page, condition: {metric: loss, op: '>'}}]")
    assert (err.value.rule, err.value.field) == ("x", "condition.value")
    ok = parse_rules(
        "extra_metrics: [my_metric]\n"
        "rules: [{name: x, severity: page, condition: {metric: my_metric, op: '>', value: 1}}]"
    )
    assert ok[0].metrics() == {"my_metric"}


def test_every_problem_is_reported_each_with_its_rule_and_field() -> None:
    with pytest.raises(RuleError) as err:
        parse_rules("rules:\n"
                    "  - {name: a, severity: loud, condition: {event: nonfinite}}\n"
                    "  - {name: b, severity: page, condition: {metric: loss, op: '>'}}\n",
                    source="team.yaml")
    assert [(p.rule, p.field) for p in err.value.problems] == [("a", "severity"),
                                                                ("b", "condition.value")]
    assert str(err.value).splitlines()[1] == "team.yaml: rule 'b': condition.value: required"


def test_leaves_take_the_rules_stale_steps_unless_they_set_their_own() -> None:
    (rule,) = rules("""
  - name: r
    severity: info
    stale_steps: 7
    condition:
      any:
        - {metric: loss, op: ">", value: 1}
        - {nonfinite: rho, stale_steps: 2}
        - {rate: loss, window_steps: 3, op: ">", value: 1}
        - {event: nonfinite}
""")
    any_of = rule.condition
    assert isinstance(any_of, AnyOf)
    assert [getattr(c, "stale_steps", None) for c in any_of.conditions] == [7, 2, 7, None]
    default = rules("  - {name: r, severity: info, condition: {metric: loss, op: '>', value: 1}}")
    assert default[0].to_dict()["condition"]["stale_steps"] == 50


def test_a_file_with_one_bad_rule_loads_nothing(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - {name: good, severity: page, condition: {event: nonfinite}}\n"
        "  - {name: bad, severity: page, condition: {metric: loss, op: '>', value: x}}\n"
    )
    with pytest.raises(RuleError, match=r"rules.yaml: rule 'bad': condition.value"):
        load_rules(path)
    with pytest.raises(RuleError, match="cannot read rule file"):
        load_rules(tmp_path / "missing.yaml")


def test_engine_refuses_duplicate_rule_names() -> None:
    r = rules(SR)
    with pytest.raises(RuleError, match="duplicate"):
        RuleEngine(r + r)


# --- the lifecycle as a property over arbitrary condition traces --------------------------------


@settings(max_examples=150, deadline=None)
@given(
    holds=st.lists(st.booleans(), max_size=60),
    for_steps=st.integers(1, 5),
    keep=st.integers(0, 3),
)
def test_lifecycle_invariants_on_arbitrary_traces(holds: list[bool], for_steps: int,
                                                   keep: int) -> None:  # fmt: skip
    eng = RuleEngine(
        rules(SR.replace("for_steps: 3", f"for_steps: {for_steps}\n    keep_firing_steps: {keep}"))
    )
    ts = replay(eng, sr(*(1.5 if h else 0.5 for h in holds)), start=0)
    h = dict(enumerate(holds))
    seq = [(t.state, t.step) for t in ts]
    i = 0
    expect_pending_at = next((s for s in h if h[s]), None)
    while i < len(seq):
        (state, p) = seq[i]
        assert (state, p) == (P, expect_pending_at)  # an episode starts at the first true step
        nxt = seq[i + 1] if i + 1 < len(seq) else None
        if nxt is None:  # still pending at the end: too short to fire, never failed
            assert all(h[s] for s in range(p, len(holds)))
            assert len(holds) - p < for_steps
            break
        state, s2 = nxt
        if state is X:  # failed before sustaining
            assert all(h[s] for s in range(p, s2))
            assert not h[s2]
            assert s2 - p < for_steps
            end = s2
            i += 2
        else:
            assert state is F
            assert s2 - p + 1 == for_steps
            assert all(h[s] for s in range(p, s2 + 1))
            res = seq[i + 2] if i + 2 < len(seq) else None
            if res is None:  # still firing: no keep+1 consecutive false steps since firing
                tail = [h[s] for s in range(s2, len(holds))]
                assert all(any(tail[j:j + keep + 1]) for j in range(len(tail) - keep))
                break
            assert res[0] is R
            r = res[1]
            assert not any(h[s] for s in range(r - keep, r + 1))  # keep+1 false steps end it
            seg = [h[s] for s in range(s2, r)]
            assert all(any(seg[j:j + keep + 1]) for j in range(len(seg) - keep))
            end = r
            i += 3
        expect_pending_at = next((s for s in h if s > end and h[s]), None)
    if not seq:
        assert not any(holds)
