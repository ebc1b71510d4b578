"""The default rule pack: it loads, pages before a spike, and stays quiet on stable runs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pytest

from agent.wire import Scalar
from server.rules import RuleEngine, load_rules
from server.types import AlertState, Observation, Severity, Transition

# Recorded from the seed experiment (two-layer ReLU FNN, width 1000, sin(x)+sin(4x), full batch,
# Adam betas (0.9, 0.999), seed 0) with the exact-HVP λ_grad: (step, loss, stability_ratio, rho).
# lr 0.01: the loss spike onset (loss > 2 × min of the previous 50 steps) is at step 733.
SPIKING = [
    (695, 0.06824, 0.9858, 0.0578), (696, 0.06825, 0.985, 0.0614), (697, 0.06824, 0.9875, 0.0612),
    (698, 0.0682, 0.9877, 0.0582), (699, 0.06815, 0.9891, 0.0529), (700, 0.0681, 0.9896, 0.046),
    (701, 0.06805, 0.9908, 0.0382), (702, 0.068, 0.9894, 0.03), (703, 0.06796, 0.99, 0.0217),
    (704, 0.06793, 0.9784, 0.0139), (705, 0.06791, 0.936, 0.0065), (706, 0.06789, 0.068, 0.0017),
    (707, 0.06788, 0.9334, 0.0068), (708, 0.06787, 0.9838, 0.0121), (709, 0.06787, 0.9896, 0.0171),
    (710, 0.06786, 0.999, 0.0216), (711, 0.06786, 0.9983, 0.026), (712, 0.06786, 1.0038, 0.0302),
    (713, 0.06786, 1.0029, 0.0347), (714, 0.06787, 1.0073, 0.0394), (715, 0.06788, 1.0064, 0.0449),
    (716, 0.0679, 1.0098, 0.0512), (717, 0.06793, 1.0098, 0.0589), (718, 0.06798, 1.0123, 0.0682),
    (719, 0.06807, 1.0127, 0.0798), (720, 0.06819, 1.0147, 0.0942), (721, 0.06838, 1.015, 0.1123),
    (722, 0.06868, 1.0167, 0.1351), (723, 0.06914, 1.017, 0.1642), (724, 0.06986, 1.0183, 0.2009),
    (725, 0.071, 1.0182, 0.2479), (726, 0.07279, 1.0205, 0.3075), (727, 0.07566, 1.0178, 0.3843),
    (728, 0.08016, 1.0184, 0.4803), (729, 0.08717, 1.0135, 0.5999), (730, 0.09748, 1.0105, 0.742),
    (731, 0.11183, 1.0011, 0.9025), (732, 0.12882, 0.993, 1.0624), (733, 0.14464, 0.9784, 1.1904),
    (734, 0.15034, 0.9688, 1.2342), (735, 0.13928, 0.957, 1.1472), (736, 0.11194, 0.9511, 0.9036),
]  # fmt: skip
# lr 0.001 (the stable control): an edge-of-stability wobble, r ≥ 1 for 12 steps, no spike.
STABLE = [
    (935, 0.05692, 0.9316, 0.0553), (936, 0.0569, 0.9487, 0.0609), (937, 0.05688, 0.9569, 0.0677),
    (938, 0.05686, 0.9675, 0.075), (939, 0.05683, 0.9782, 0.0836), (940, 0.05681, 0.9811, 0.0944),
    (941, 0.05679, 0.9927, 0.1062), (942, 0.05677, 0.9942, 0.1218), (943, 0.05675, 1.0024, 0.14),
    (944, 0.05673, 1.0035, 0.1636), (945, 0.05671, 1.0084, 0.1919), (946, 0.0567, 1.0094, 0.2278),
    (947, 0.05669, 1.0127, 0.2717), (948, 0.0567, 1.0124, 0.3273), (949, 0.05671, 1.0152, 0.3953),
    (950, 0.05674, 1.0139, 0.4815), (951, 0.0568, 1.0148, 0.5865), (952, 0.0569, 1.0129, 0.7163),
    (953, 0.05706, 1.0112, 0.8709), (954, 0.05729, 1.0072, 1.0511), (955, 0.0576, 1.0016, 1.2491),
    (956, 0.05797, 0.9939, 1.4464), (957, 0.05831, 0.9844, 1.6087), (958, 0.05848, 0.9741, 1.6854),
    (959, 0.0583, 0.9652, 1.6201), (960, 0.05774, 0.9587, 1.3763), (961, 0.057, 0.9565, 0.9599),
    (962, 0.05643, 0.9552, 0.4333), (963, 0.05628, 0.9401, 0.1148), (964, 0.05651, 0.9567, 0.588),
    (965, 0.05685, 0.9547, 0.9195), (966, 0.05704, 0.9518, 1.0634), (967, 0.05693, 0.9487, 1.005),
    (968, 0.05659, 0.9479, 0.7631), (969, 0.05626, 0.9463, 0.3975), (970, 0.05612, 0.3696, 0.019),
]  # fmt: skip


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


def recorded(rows: Sequence[tuple[int, float, float, float]]) -> list[tuple[int, dict[str, float]]]:
    return [(s, {"loss": lo, "stability_ratio": r, "rho": rho}) for s, lo, r, rho in rows]


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
    assert sev["nonfinite_loss"] is Severity.PAGE
    assert sev["unrescaled_momentum_jump"] is Severity.PAGE
    assert sev["stability_edge_crossing"] is Severity.WARNING


def test_recorded_seed_spike_is_paged_before_its_onset() -> None:
    ts = run_pack(recorded(SPIKING))
    pages = fired(ts, Severity.PAGE)
    assert pages
    assert pages[0][0] == "predicted_loss_spike"
    onset = 733
    assert onset - pages[0][1] >= 10  # lead in steps
    assert ("loss_spike", onset) in fired(ts)  # the reactive rule confirms the spike itself


def test_recorded_edge_of_stability_wobble_only_warns() -> None:
    ts = run_pack(recorded(STABLE))
    assert fired(ts, Severity.PAGE) == []
    assert [r for r, _ in fired(ts, Severity.WARNING)] == ["stability_edge_crossing"]


def synthetic(spike: bool) -> list[tuple[int, dict[str, float]]]:
    """300 steps: stable, then v decays (ρ → 0.02); the spiking run holds r ≥ 1 and blows up."""
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
        if not spike and step >= 200:
            # short wobbles across the edge: 2 steps, below the 3-step sustain the issue-8 tuning
            # gave the page (it was 8 steps, and these wobbles were 3 steps long)
            r = 1.02 if step % 7 < 2 else 0.97
        rows.append((step, {"loss": loss, "stability_ratio": r, "rho": rho,
                            "sqrt_v_decay": 1.0 if decay else 1.3}))  # fmt: skip
    return rows


def test_synthetic_spike_pages_ahead_and_stable_twin_does_not() -> None:
    spiking = run_pack(synthetic(spike=True))
    pages = fired(spiking, Severity.PAGE)
    assert pages[0] == ("predicted_loss_spike", 202)  # sustain 3 (issue 8 tuning)
    assert ("loss_spike", 228) in fired(spiking)
    stable = run_pack(synthetic(spike=False))
    assert fired(stable, Severity.PAGE) == []
    assert ("preconditioner_decay", 120) in fired(stable, Severity.INFO)


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


def test_momentum_jump_pages_only_when_the_buffer_needs_rescaling() -> None:
    trace = [(s, {"loss": 1.0}) for s in range(1, 20)]
    events = {
        5: [Ev("momentum_jump", rescaled=True, needs_rescale=False, old=0.9, new=0.97)],
        10: [Ev("momentum_jump", rescaled=False, needs_rescale=True, old=0.9, new=0.97)],
    }
    ts = run_pack(trace, events)
    assert fired(ts, Severity.PAGE) == [("unrescaled_momentum_jump", 10)]
    assert fired(ts, Severity.INFO) == [("hyperparameter_change", 5)]  # kept firing through 10
    page = next(t for t in ts if t.rule == "unrescaled_momentum_jump")
    assert "advised_factor" in page.annotations["runbook"]


def test_nonfinite_loss_pages_immediately() -> None:
    trace = [(s, {"loss": 1.0 if s < 8 else math.nan}) for s in range(1, 12)]
    assert fired(run_pack(trace), Severity.PAGE) == [("nonfinite_loss", 8)]
    by_event = run_pack([(s, {"loss": 1.0}) for s in range(1, 5)], {3: [Ev("nonfinite")]})
    assert fired(by_event, Severity.PAGE) == [("nonfinite_loss", 3)]


# The secant stability ratio of the same lr 0.01 run (monitor.secant, no closure): (step, r_secant).
SECANT = [
    (720, 0.8759), (721, 0.9128), (722, 0.9424), (723, 0.9654), (724, 0.9826), (725, 0.9949),
    (726, 1.0039), (727, 1.0092), (728, 1.0125), (729, 1.013), (730, 1.0117), (731, 1.0073),
    (732, 1.0004), (733, 0.9899), (734, 0.9777), (735, 0.9651), (736, 0.9536),
]  # fmt: skip


def test_secant_page_without_a_closure_is_late_but_ahead() -> None:
    ts = run_pack([(s, {"stability_ratio_secant": r}) for s, r in SECANT])
    assert fired(ts, Severity.PAGE) == [("predicted_loss_spike_secant", 728)]  # onset 733
    # the stable control's secant ratio peaks at 0.968: a short crossing does not page either
    short = [(s, {"stability_ratio_secant": 1.01 if s in (5, 6) else 0.97}) for s in range(1, 20)]
    assert fired(run_pack(short)) == []
