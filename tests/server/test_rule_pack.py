"""The default rule pack: it loads, pages before a spike, and stays quiet on stable runs."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from spikewatch.monitor.instability import InstabilityTracker
from spikewatch.protocol.wire import Scalar
from spikewatch.server.backtest import episodes, score_episodes, spike_onsets
from spikewatch.server.rules import RuleEngine, load_rules
from spikewatch.server.rules._condition_model import Threshold, leaves
from spikewatch.server.types import AlertState, Observation, Severity, Transition

TRACES = Path(__file__).parent / "traces"


def _trace(name: str) -> list[tuple[int, dict[str, float]]]:
    """A recorded run of the seed problem (tests/server/traces; see its "source"), with the
    instability rise the agent derives from it at each drain (monitor.instability)."""
    data = json.loads((TRACES / name).read_text())
    tracker = InstabilityTracker()
    out = []
    for step, loss, ratio, rho in data["rows"]:
        values = {"loss": loss}
        if ratio is not None:
            values |= {"stability_ratio_two_secant": ratio, "rho_sampled": rho}
        values["instability_rise"] = tracker.update(step, loss, ratio)
        if not math.isnan(tracker.recovery):
            values["instability_recovery"] = tracker.recovery
        out.append((step, values))
    return out


class Ev:
    def __init__(self, type: str, **data: Scalar) -> None:
        self.type = type
        self.data: Mapping[str, Scalar] = data


def run_pack(
    trace: Sequence[tuple[int, Mapping[str, float]]],
    events: Mapping[int, Sequence[Ev]] | None = None,
) -> list[Transition]:
    eng = RuleEngine(load_rules())
    out: list[Transition] = []
    for step, values in trace:
        evs = (events or {}).get(step, ())
        out += eng.observe(
            Observation("run", step, float(step), values, tuple(e.type for e in evs)), evs
        )
    return out


def fired(ts: Sequence[Transition], severity: Severity | None = None) -> list[tuple[str, int]]:
    return [
        (t.rule, t.step)
        for t in ts
        if t.state is AlertState.FIRING and (severity is None or t.severity is severity)
    ]


def test_default_pack_loads_and_documents_every_rule() -> None:
    pack = load_rules()
    names = {r.name for r in pack}
    assert {"predicted_loss_spike", "preconditioner_decay", "spectral_alignment_collapse",
            "gradient_spike_dominance", "unrescaled_momentum_jump", "output_overconfidence",
            "loss_spike", "nonfinite_loss"} <= names  # fmt: skip
    for r in pack:
        assert {"summary", "description", "runbook"} <= set(r.annotations), r.name
        assert len(r.annotations["runbook"]) > 40, r.name
    sev = {r.name: r.severity for r in pack}
    assert sev["predicted_loss_spike"] is Severity.PAGE
    assert sev["unstable_after_hparam_change"] is Severity.PAGE
    assert sev["stability_ratio_far_past_edge"] is Severity.PAGE
    assert sev["nonfinite_loss"] is Severity.PAGE
    assert sev["unrescaled_momentum_jump"] is Severity.WARNING
    assert sev["prediction_degraded"] is Severity.WARNING
    assert sev["stability_edge_crossing"] is Severity.WARNING
    assert sev["clean_loss_swings"] is Severity.WARNING


def test_recorded_spiking_run_pages_before_every_onset() -> None:
    """The seed problem at lr 0.01 with the predictor's defaults: its first instabilities only
    warn; once one has moved the loss by 50 %, each later one pages well before the spike."""
    trace = _trace("seed_fnn_lr0.01.json")
    ts = run_pack(trace)
    loss = [(s, v["loss"]) for s, v in trace]
    pack = load_rules()
    rep = score_episodes("run", pack, episodes(ts), loss)
    assert rep.onsets  # derived from the recorded loss, not assumed
    assert rep.recall == 1.0
    assert min(rep.page_leads) >= 8
    assert rep.false_pages == 0
    pages = fired(ts, Severity.PAGE)
    assert {r for r, _ in pages} == {"predicted_loss_spike"}
    first_warning = min(s for r, s in fired(ts, Severity.WARNING) if r == "stability_edge_crossing")
    assert first_warning < pages[0][1]  # the first instability warned, it did not page


def test_recorded_edge_of_stability_control_only_warns() -> None:
    """lr 0.001 crosses the edge again and again (bumps of 1–2 %): warnings, never a page."""
    trace = _trace("seed_fnn_lr0.001.json")
    ts = run_pack(trace)
    assert spike_onsets([(s, v["loss"]) for s, v in trace]) == []
    assert fired(ts, Severity.PAGE) == []
    assert "stability_edge_crossing" in {r for r, _ in fired(ts, Severity.WARNING)}


def synthetic(spike: bool) -> list[tuple[int, dict[str, float]]]:
    """300 steps: stable, then v decays (ρ → 0.02) after a first instability that rose 1.5×;
    the spiking run holds r ≥ 1 from step 200 and blows up."""
    rows = []
    for step in range(1, 301):
        loss = 1.0 / math.sqrt(step)
        decay = step > 100
        rho = 0.02 if decay else 0.8
        r = 0.6 + 0.4 * min(1.0, max(0.0, (step - 100) / 100))  # reaches 1.0 at step 200
        if spike and 200 <= step < 240:
            r, rho = 1.05, min(0.02 * 1.15 ** (step - 200), 3.0)
        if spike and step >= 225:
            loss *= 1.0 + 0.3 * (step - 224)  # doubles within a few steps
        if not spike:  # single readings across the edge, 0.97 otherwise
            r = 1.02 if step >= 200 and step % 7 < 1 else min(r, 0.97)
        rows.append((step, {"loss": loss, "stability_ratio_two_secant": r, "rho_sampled": rho,
                            "rho": rho, "sqrt_v_decay": 1.0 if decay else 1.3,
                            "instability_rise": 1.5 if step > 150 else 1.0,
                            "instability_recovery": 0.9}))  # fmt: skip
    return rows


def test_synthetic_spike_pages_ahead_and_stable_twin_does_not() -> None:
    spiking = run_pack(synthetic(spike=True))
    pages = fired(spiking, Severity.PAGE)
    assert pages[0] == ("predicted_loss_spike", 199)  # r ≥ 0.99 from step 198: 2 readings
    assert ("loss_spike", 228) in fired(spiking)
    stable = run_pack(synthetic(spike=False))
    assert fired(stable, Severity.PAGE) == []
    assert ("preconditioner_decay", 120) in fired(stable, Severity.INFO)


def test_a_crossing_before_any_large_instability_only_warns() -> None:
    rows = synthetic(spike=True)
    for _, v in rows:
        v["instability_rise"] = 1.1  # the run's instabilities so far moved the loss by 10 %
    ts = run_pack(rows)
    assert fired(ts, Severity.PAGE) == []
    assert ("stability_edge_crossing", 202) in fired(ts, Severity.WARNING)  # r ≥ 1 from 200


def test_a_crossing_back_on_the_loss_floor_after_a_spike_only_warns() -> None:
    """The instability before moved the loss ≥ 1.5×, but the loss is back where it rose from, not
    past it (a run at its loss floor, where the crossings after a spike ended in wobbles)."""
    rows = synthetic(spike=True)
    for _, v in rows:
        v["instability_recovery"] = 1.0
    ts = run_pack(rows)
    assert fired(ts, Severity.PAGE) == []
    assert ("stability_edge_crossing", 202) in fired(ts, Severity.WARNING)


@pytest.mark.parametrize(("ratio", "pages"), [(1.6, True), (1.4, False)])
def test_a_reading_far_past_the_edge_pages_whatever_the_runs_history(ratio: float,
                                                                    pages: bool) -> None:
    """No earlier instability opened the gate, but the ratio reads ≥ 1.5 for the rule's two
    readings: a step that far past the edge doubles the error along it every step."""
    rows = synthetic(spike=True)
    for step, v in rows:
        v["instability_rise"] = 1.0
        if 200 <= step < 240:
            v["stability_ratio_two_secant"] = ratio
    ts = run_pack(rows)
    assert fired(ts, Severity.PAGE) == ([("stability_ratio_far_past_edge", 201)] if pages else [])


@pytest.mark.parametrize(
    ("metric", "value", "rule", "steps"),
    [
        ("sa_sign_diversity", 0.05, "spectral_alignment_collapse", 5),
        ("grad_spike_share", 0.95, "gradient_spike_dominance", 5),
        ("max_prob", 0.995, "output_overconfidence", 20),
    ],
)
def test_each_research_rule_fires_when_sustained_only(
    metric: str, value: float, rule: str, steps: int
) -> None:
    healthy = {"sa_sign_diversity": 0.8, "grad_spike_share": 0.3, "max_prob": 0.6}
    short = [(s, {**healthy, metric: value if s <= steps - 1 else healthy[metric]})
             for s in range(1, 40)]  # fmt: skip
    assert fired(run_pack(short)) == []
    long = [(s, {**healthy, metric: value}) for s in range(1, 40)]
    assert fired(run_pack(long)) == [(rule, steps)]


def test_hyperparameter_changes_page_only_past_the_edge() -> None:
    """A momentum jump whose buffer scale is off warns (it did not spike on the benchmark); a
    change that takes the ratio past 1 (β1 down, lr up) pages at the step it takes effect."""
    trace = [(s, {"loss": 1.0}) for s in range(1, 20)]
    events = {
        5: [Ev("momentum_jump", rescaled=True, needs_rescale=True, old=0.9, new=0.97,
               unstable_after=False)],
        10: [Ev("momentum_jump", rescaled=False, needs_rescale=True, old=0.9, new=0.97,
                unstable_after=False)],
        15: [Ev("hparam_change", hparam="beta1", old=0.97, new=0.9, unstable_after=True),
             Ev("momentum_jump", rescaled=False, needs_rescale=False, old=0.97, new=0.9,
                unstable_after=True)],
    }
    ts = run_pack(trace, events)
    assert fired(ts, Severity.PAGE) == [("unstable_after_hparam_change", 15)]
    assert ("unrescaled_momentum_jump", 5) in fired(ts, Severity.WARNING)
    warn = next(t for t in ts if t.rule == "unrescaled_momentum_jump")
    assert "advised_factor" in warn.annotations["runbook"]


def test_a_predictor_that_cannot_run_every_step_warns() -> None:
    for cadence in (0.0, 8.0):
        trace = [(s, {"loss": 1.0, "agent_prediction_cadence": 1.0 if s < 10 else cadence})
                 for s in range(1, 20)]
        assert fired(run_pack(trace)) == [("prediction_degraded", 10)]


def test_swings_of_the_clean_loss_warn_and_page_only_after_a_spike() -> None:
    """A completed swing of eval_loss is a warning: near the edge of minibatch training it came
    before most onsets but also on half the runs that never spiked (swing_study). After a spike
    of the clean loss in the last 1000 steps the run is past its edge, and a swing pages."""
    swings = [(s, {"loss": 1.0, "eval_loss_swings": 0.0 if s < 10 else 2.0 if s < 30 else 0.0,
                   "eval_loss_spikes": 0.0}) for s in range(1, 40)]  # fmt: skip
    ts = run_pack(swings)
    assert fired(ts) == [("clean_loss_swings", 10)]
    assert fired(ts, Severity.PAGE) == []
    assert any(t.rule == "clean_loss_swings" and t.state is AlertState.RESOLVED for t in ts)
    after_spike = [(s, {**v, "eval_loss_spikes": 1.0}) for s, v in swings]
    ts = run_pack(after_spike)
    assert fired(ts, Severity.PAGE) == [("clean_loss_swings_after_spike", 10)]
    assert any(t.rule == "clean_loss_swings_after_spike" and t.state is AlertState.RESOLVED
               for t in ts)  # fmt: skip
    spike_alone = [(s, {"loss": 1.0, "eval_loss_swings": 0.0, "eval_loss_spikes": 1.0})
                   for s in range(1, 40)]  # fmt: skip
    assert fired(run_pack(spike_alone), Severity.PAGE) == []


def test_a_guard_action_raises_an_info_alert_and_no_page() -> None:
    trace = [(s, {"loss": 1.0}) for s in range(1, 20)]
    ts = run_pack(trace, {6: [Ev("guard_action", action="v", factor=0.5, stability_ratio=1.01)]})
    assert fired(ts) == [("guard_acted", 6)]
    assert fired(ts, Severity.INFO) == [("guard_acted", 6)]


def test_nonfinite_loss_pages_immediately() -> None:
    trace = [(s, {"loss": 1.0 if s < 8 else math.nan}) for s in range(1, 12)]
    assert fired(run_pack(trace), Severity.PAGE) == [("nonfinite_loss", 8)]
    by_event = run_pack([(s, {"loss": 1.0}) for s in range(1, 5)], {3: [Ev("nonfinite")]})
    assert fired(by_event, Severity.PAGE) == [("nonfinite_loss", 3)]


def _page_threshold(metric: str) -> float:
    """The value predicted_loss_spike compares `metric` with (the pack's, not a copy of it)."""
    rule = next(r for r in load_rules() if r.name == "predicted_loss_spike")
    found = {c.value for c in leaves(rule.condition)
             if isinstance(c, Threshold) and c.metric == metric}
    assert len(found) == 1, (metric, found)
    return found.pop()


def _ratio_bound_page(trace: list[tuple[int, dict[str, float]]]) -> tuple[int, int]:
    """(first step of the readings ≥ 0.99 that made a page, the page's step), for the first page
    whose last missing condition was the ratio (the run's instability rise held before)."""
    values = dict(trace)
    for _, step in fired(run_pack(trace), Severity.PAGE):
        start = step
        while values.get(start - 1, {}).get("stability_ratio_two_secant", 0.0) >= 0.99:
            start -= 1
        if values[start - 1]["instability_rise"] >= _page_threshold("instability_rise"):
            return start, step
    raise AssertionError("no page where the ratio was the last condition to hold")


def test_a_crossing_shorter_than_the_sustain_does_not_page() -> None:
    trace = _trace("seed_fnn_lr0.01.json")
    start, step = _ratio_bound_page(trace)
    assert step - start == 1  # two readings ≥ 0.99
    clipped = [(s, {**v, "stability_ratio_two_secant": 0.98}) if s == step else (s, v)
               for s, v in trace]  # fmt: skip
    assert (("predicted_loss_spike", step) not in fired(run_pack(clipped), Severity.PAGE))


def test_page_resolves_keep_firing_steps_after_the_condition_clears() -> None:
    trace = _trace("seed_fnn_lr0.01.json")
    rule = next(r for r in load_rules() if r.name == "predicted_loss_spike")
    _, step = _ratio_bound_page(trace)
    values = dict(trace)
    last = step
    while (values[last + 1].get("stability_ratio_two_secant", 0.0) >= 0.99
           and values[last + 1].get("rho_sampled", 1.0) < _page_threshold("rho_sampled")
           and values[last + 1].get("instability_recovery", math.inf)
           < _page_threshold("instability_recovery")):  # fmt: skip
        last += 1
    ep = next(e for e in episodes(run_pack(trace))
              if e.rule == "predicted_loss_spike" and e.fired_step == step)
    assert ep.resolved_step == last + 1 + rule.keep_firing_steps


@pytest.mark.parametrize("rho_scale", [1.0, 100.0])
def test_severity_is_graded_by_the_preconditioner_state(rho_scale: float) -> None:
    """The same crossing, after the same instabilities, pages with a decayed preconditioner and
    only warns with a live one."""
    trace = [(s, {**v, "rho_sampled": v.get("rho_sampled", 1.0) * rho_scale})
             for s, v in _trace("seed_fnn_lr0.01.json")]  # fmt: skip
    ts = run_pack(trace)
    assert "stability_edge_crossing" in {r for r, _ in fired(ts, Severity.WARNING)}
    assert bool(fired(ts, Severity.PAGE)) is (rho_scale == 1.0)
