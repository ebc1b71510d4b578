"""The default pack's early-warning rules on RECORDED signal traces (tests/bench/traces/).

The traces were recorded by the early-warning benchmark (the agent with the exact HVP, every step)
on the seed regression MLP: a spiking run (lr 0.01) and its stable control (lr 0.001). They pin
what the tuned pack promises: a page ≥ 15 steps before the onset, no page for a crossing shorter
than the sustain, resolution after keep_firing_steps, and warning-not-page for edge-of-stability
wobbles whose preconditioner is not decayed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from agent.wire import Scalar
from server import backtest as bt
from server.rules import load_rules
from server.types import AlertState, Observation, Severity, Transition

TRACES = Path(__file__).with_name("traces")
ONSET = 732  # the spiking trace's loss spike onset (loss > 2 × min of the previous 50 steps)
CROSSING = 711  # ...preceded by stability_ratio ≥ 1 from this step on, with ρ ≈ 0.03


class Ev:
    def __init__(self, type: str, **data: Scalar) -> None:
        self.type = type
        self.data: Mapping[str, Scalar] = data


Trace = list[tuple[int, dict[str, float]]]


def load(name: str) -> Trace:
    doc = json.loads((TRACES / name).read_text())
    cols = doc["columns"]
    assert cols[0] == "step"
    return [(row[0], {c: v for c, v in zip(cols[1:], row[1:], strict=True) if v is not None})
            for row in doc["rows"]]  # fmt: skip


def replay(trace: Trace, events: Mapping[int, Sequence[Ev]] | None = None) -> list[Transition]:
    obs = [(Observation("run", s, float(s), v, tuple(e.type for e in (events or {}).get(s, ()))),
            list((events or {}).get(s, ()))) for s, v in trace]  # fmt: skip
    return bt.replay(load_rules(), obs)


def fired(ts: Sequence[Transition], severity: Severity) -> list[tuple[str, int]]:
    return [(t.rule, t.step) for t in ts
            if t.state is AlertState.FIRING and t.severity is severity]  # fmt: skip


def loss_of(trace: Trace) -> list[tuple[int, float]]:
    return [(s, v["loss"]) for s, v in trace if "loss" in v]


def test_recorded_traces_have_the_documented_ground_truth() -> None:
    assert bt.spike_onsets(loss_of(load("mlp_spiking_s0.json"))) == [ONSET]
    assert bt.spike_onsets(loss_of(load("mlp_control_lr0.001.json"))) == []
    r = dict(load("mlp_spiking_s0.json"))
    assert r[CROSSING]["stability_ratio"] >= 1.0 > r[CROSSING - 1]["stability_ratio"]


def test_real_spike_is_paged_at_least_15_steps_ahead() -> None:
    trace = load("mlp_spiking_s0.json")
    ts = replay(trace)
    rep = bt.score("run", load_rules(), ts, loss_of(trace))
    assert rep.recall == 1.0
    assert rep.page_leads == [ONSET - (CROSSING + 2)]  # sustain 3 observations: fires at 713
    assert rep.page_leads[0] >= 15
    assert ("predicted_loss_spike", CROSSING + 2) in fired(ts, Severity.PAGE)
    assert ("loss_spike", ONSET) in fired(ts, Severity.WARNING)  # the reactive rule confirms it


def test_crossing_shorter_than_the_sustain_does_not_page() -> None:
    trace = load("mlp_spiking_s0.json")
    clipped = [(s, {**v, "stability_ratio": min(v["stability_ratio"], 0.99)})
               if CROSSING + 2 <= s <= ONSET else (s, v) for s, v in trace]  # fmt: skip
    pages = fired(replay(clipped), Severity.PAGE)
    assert not [p for p in pages if CROSSING <= p[1] <= ONSET]


def test_page_resolves_keep_firing_steps_after_the_condition_clears() -> None:
    trace = load("mlp_spiking_s0.json")
    rule = next(r for r in load_rules() if r.name == "predicted_loss_spike")
    held = [s for s, v in trace
            if s >= CROSSING and v["stability_ratio"] >= 1.0 and v["rho"] < 0.08]  # fmt: skip
    last = max(s for s in held if all(x in held for x in range(CROSSING, s + 1)))
    ep = next(e for e in bt.episodes(replay(trace))
              if e.rule == "predicted_loss_spike" and e.fired_step == CROSSING + 2)
    assert ep.resolved_step == last + 1 + rule.keep_firing_steps


def test_wobble_with_a_live_preconditioner_only_warns() -> None:
    trace = load("mlp_control_lr0.001.json")
    ts = replay(trace)
    assert fired(ts, Severity.PAGE) == []
    assert [r for r, _ in fired(ts, Severity.WARNING)] == ["stability_edge_crossing"]


@pytest.mark.parametrize("rho_scale", [1.0, 3.0])
def test_severity_is_graded_by_the_preconditioner_state(rho_scale: float) -> None:
    """The same crossing pages with a decayed preconditioner and only warns with a live one."""
    trace = [(s, {**v, "rho": v["rho"] * rho_scale}) for s, v in load("mlp_spiking_s0.json")
             if CROSSING - 5 <= s <= CROSSING + 6]  # fmt: skip
    ts = replay(trace)
    warned = [r for r, _ in fired(ts, Severity.WARNING)]
    assert warned == ["stability_edge_crossing"]
    pages = fired(ts, Severity.PAGE)
    assert pages == ([("predicted_loss_spike", CROSSING + 2)] if rho_scale == 1.0 else [])


def test_hparam_change_that_crosses_the_threshold_pages_at_once() -> None:
    base = [(s, {"loss": 0.07, "stability_ratio": 0.4, "rho": 0.3}) for s in range(1, 20)]
    jumped = [(s, {**v, "stability_ratio": 4.0}) if s >= 10 else (s, v) for s, v in base]
    change = {10: [Ev("hparam_change", name="lr", old=0.001, new=0.01)]}
    pages = fired(replay(jumped, change), Severity.PAGE)
    assert pages[:1] == [("unstable_after_hparam_change", 10)]
    lowered = [(s, {**v, "stability_ratio": 0.04}) if s >= 10 else (s, v) for s, v in base]
    assert fired(replay(lowered, change), Severity.PAGE) == []
