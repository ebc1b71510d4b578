"""Every probe works for every floating dtype: float32, float64, float16 and bfloat16 models.

Issue 14, item 6: on a float64 model the ρ probe failed at its first measurement with
`linalg.vector_norm: the dtype of the input (Double) should be convertible without narrowing to
the specified dtype (Float)` and was disabled. These tests drive the real agent on small models in
each dtype, with and without a closure (exact and finite-difference curvature), Adam and AdamW in
their for-loop and foreach variants, the full profile at an unlimited budget and the defaults,
and require that no probe reports an error and that every expected signal arrives finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from spikewatch import agent
from spikewatch.agent import _profiles as pf
from spikewatch.agent._probe_base import sum_of_squares
from spikewatch.protocol import names as nm
from spikewatch.protocol import wire
from spikewatch.protocol.names import EventType
from tests.agent._peer import Peer

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
STEPS = 30

# the scalars each probe reports (at step 0 at least: every cadence comes round there; the
# two-secant's first reading is of step 2, four steps in)
SIGNALS = {
    pf.HPARAMS: (nm.LR, nm.BETA1, nm.BETA2),
    pf.GRAD_NORM: (nm.GRAD_NORM,),
    pf.PRECOND: (nm.RHO, nm.SQRT_V_NORM),
    pf.TWO_SECANT: (nm.LAMBDA_TWO_SECANT, nm.STABILITY_RATIO_TWO_SECANT, nm.RHO_SAMPLED,
                    nm.STABILITY_RATIO_SECANT),
    pf.SPIKE_SHARE: (nm.GRAD_SPIKE_SHARE,),
    pf.ALIGNMENT: (nm.SA_SIGN_DIVERSITY,),
    pf.LOGITS: (nm.MAX_PROB, nm.ENTROPY, nm.PROB_IMPURITY, nm.LOGIT_NORM),
}
CLOSURE_SIGNALS = {  # with attach(closure=...)
    pf.CURVATURE: (nm.LAMBDA_GRAD, nm.STABILITY_RATIO),
    pf.LAMBDA_MAX: (nm.LAMBDA_MAX, nm.STABILITY_RATIO_MAX, nm.GRAD_TOP_EIG_COS),
}
LAYER_SIGNALS = {pf.ALIGNMENT: nm.SA_MEAN, pf.PRECOND: nm.RHO, pf.SPIKE_SHARE: nm.GRAD_SPIKE_SHARE}


@dataclass(frozen=True)
class Case:
    opt: type[torch.optim.Adam]  # AdamW is one
    opt_kw: dict[str, Any] = field(default_factory=dict)
    curvature: str | None = None  # None: no closure (the secant is the curvature signal)
    profile: str | None = "full"
    budget: float | None = math.inf  # None: the default budget
    step_closure: bool = False  # train with opt.step(closure) instead of backward + step()


CASES = {
    "no-closure-adam-forloop": Case(torch.optim.Adam, {"foreach": False}),
    "no-closure-adamw-foreach-amsgrad": Case(torch.optim.AdamW,
                                             {"foreach": True, "amsgrad": True}),
    "exact-adamw-foreach": Case(torch.optim.AdamW, {"foreach": True, "weight_decay": 0.05},
                                curvature="exact"),
    "exact-adam-l2-forloop-step-closure": Case(torch.optim.Adam,
                                               {"foreach": False, "weight_decay": 1e-3},
                                               curvature="exact", step_closure=True),
    "fd-adam-foreach": Case(torch.optim.Adam, {"foreach": True}, curvature="fd"),
    "fd-adamw-forloop": Case(torch.optim.AdamW, {"foreach": False}, curvature="fd"),
    "defaults-exact-adamw": Case(torch.optim.AdamW, {}, curvature="exact", profile=None,
                                 budget=None),
    "defaults-no-closure-adam-foreach": Case(torch.optim.Adam, {"foreach": True}, profile=None,
                                         budget=None),
}


def _records(peer: Peer) -> list[wire.Record]:
    return [r for m in peer.first_seen() if isinstance(m, wire.Batch) for r in m.records]


def _problem(dtype: torch.dtype, seed: int = 0) -> tuple[nn.Sequential, Tensor, Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 16), nn.Tanh(),
                          nn.Linear(16, 3)).to(dtype)
    x = torch.randn(48, 6).to(dtype)
    y = torch.randint(0, 3, (48,))
    return model, x, y


def _run(peer: Peer, dtype: torch.dtype, case: Case, run: str) -> list[wire.Record]:
    model, x, y = _problem(dtype)
    # pure-fp16 Adam needs a large ε (g² underflows to 0, the update becomes m/ε; the default
    # 1e-8 rounds to 0 in fp16): that is Adam's fp16 problem, not the agent's
    eps = 1e-3 if dtype == torch.float16 else 1e-6
    opt = case.opt(model.parameters(), lr=3e-3, eps=eps, **case.opt_kw)

    def loss_fn() -> Tensor:
        return nn.functional.cross_entropy(model(x), y)

    kw: dict[str, Any] = {}
    if case.curvature is not None:
        kw = {"closure": loss_fn, "curvature": case.curvature}
    if case.profile is not None:
        kw["profile"] = case.profile
    if case.budget is not None:
        kw["overhead_budget"] = case.budget
    monitor = agent.attach(model, opt, run=run, endpoint=peer.endpoint, logits_module=model[-1],
                           **kw)
    grad_norms = []
    for _ in range(STEPS):
        if case.step_closure:
            def closure() -> Tensor:
                opt.zero_grad()
                loss = loss_fn()
                torch.autograd.backward(loss)
                grad_norms.append(_grad_norm(model))
                return loss
            loss = opt.step(closure)
            assert isinstance(loss, Tensor)
        else:
            opt.zero_grad()
            loss = loss_fn()
            torch.autograd.backward(loss)
            grad_norms.append(_grad_norm(model))
            opt.step()
        assert torch.isfinite(loss), "the training itself diverged: the test model is wrong"
        monitor.log(loss=loss)
    monitor.close(timeout=5.0)
    assert peer.wait_for(lambda: monitor.counters().acked == monitor.counters().submitted, 10)
    assert peer.invalid == []
    records = _records(peer)
    got = {r.step: r.scalars[nm.GRAD_NORM] for r in records if nm.GRAD_NORM in r.scalars}
    if case.budget == math.inf:
        assert sorted(got) == list(range(STEPS))
    assert 0 in got  # the default budget may stretch the cadence after the first step
    # ‖g‖ of the model's own gradients, accumulated in float64: exact up to float32 rounding
    assert [got[s] for s in sorted(got)] == pytest.approx([grad_norms[s] for s in sorted(got)],
                                                          rel=1e-5)
    return records


def _grad_norm(model: nn.Module) -> float:
    return float(torch.cat([p.grad.reshape(-1).double() for p in model.parameters()
                            if p.grad is not None]).norm())


def _probe_errors(records: list[wire.Record]) -> list[tuple[int, dict[str, Any]]]:
    return [(r.step, dict(e.data)) for r in records for e in r.events
            if e.type == EventType.PROBE_ERROR.value]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("case", list(CASES))
def test_every_probe_works_in_every_dtype(peer: Peer, case: str, dtype: torch.dtype) -> None:
    c = CASES[case]
    records = _run(peer, dtype, c, f"dtype-{case}")
    assert _probe_errors(records) == []
    scalars: dict[str, dict[int, float]] = {}
    for r in records:
        for k, v in r.scalars.items():
            scalars.setdefault(k, {})[r.step] = v
    cadences = pf.PROFILES[c.profile or "default"].cadences
    probes = {**SIGNALS, **(CLOSURE_SIGNALS if c.curvature is not None else {})}
    due = [p for p in probes if cadences.get(p, 0) > 0]
    assert pf.PRECOND in due
    for probe in due:
        first = 2 if probe == pf.TWO_SECANT else 0
        for metric in probes[probe]:
            values = scalars.get(metric, {})
            assert first in values, f"{metric} missing at step {first}"
    for metric in (m for p in due for m in probes[p]):
        values = scalars.get(metric, {})
        bad = {s: v for s, v in values.items() if not math.isfinite(v)}
        assert not bad, f"{metric} not finite at {bad}"
    for probe, metric in LAYER_SIGNALS.items():
        if probe not in due:
            continue
        per_layer = [(r.step, lay, v) for r in records
                     for lay, v in r.layers.get(metric, {}).items()]
        assert per_layer, f"{metric} has no per-layer values"
        assert all(math.isfinite(v) for _, _, v in per_layer), (metric, per_layer)
    if c.budget == math.inf:  # never disabled on the way
        assert sorted(scalars[nm.RHO]) == list(range(0, STEPS, cadences[pf.PRECOND]))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_sgd_momentum_buffers_in_every_dtype(peer: Peer, dtype: torch.dtype) -> None:
    """SGD: the Adam-state probes are off (reported once); the hyperparameter watch measures the
    momentum buffers' norm every step, in the buffers' dtype."""
    model, x, y = _problem(dtype, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = agent.attach(model, opt, run="dtype-sgd", endpoint=peer.endpoint, profile="full",
                           overhead_budget=math.inf, logits_module=model[-1])
    for i in range(8):
        if i == 5:
            opt.param_groups[0]["momentum"] = 0.5  # a momentum jump reads the buffer ratio
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        torch.autograd.backward(loss)
        opt.step()
        monitor.log(loss=loss)
    monitor.close(timeout=5.0)
    assert peer.wait_for(lambda: monitor.counters().acked == monitor.counters().submitted, 10)
    records = _records(peer)
    errors = [(e["probe"], e["error"]) for _, e in _probe_errors(records)]
    assert errors == [("precond", "UnsupportedOptimizer")]
    jumps = [e for r in records for e in r.events if e.type == EventType.MOMENTUM_JUMP.value]
    assert len(jumps) == 1
    assert jumps[0].data["buffer_ratio"] == pytest.approx(1.0)  # untouched by the user
    assert sorted(r.step for r in records if nm.GRAD_NORM in r.scalars) == list(range(8))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_sum_of_squares_is_the_float32_sum_in_every_dtype(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    ts = [torch.randn(n, generator=gen) * s for n, s in ((1000, 3.0), (37, 0.01), (4096, 40.0))]
    low = [t.to(dtype) for t in ts]
    got = sum_of_squares(low)
    assert got.dtype == torch.float32
    want = sum(float(t.double().square().sum()) for t in low)
    # float32 accumulation of the stored values: no rounding of the result to the input dtype
    assert float(got) == pytest.approx(want, rel=1e-5)
    # mixed dtypes in one call (e.g. fp32 norms beside bf16 weights)
    mixed = sum_of_squares([*low, *ts])
    assert float(mixed) == pytest.approx(want + sum(float(t.double().square().sum())
                                                    for t in ts), rel=1e-5)


def test_half_precision_gradient_norm_past_the_fp16_range_is_finite() -> None:
    """‖g‖ = 1e5 > 65504 (fp16's largest value) although every element is small: the norm must
    not be formed in fp16."""
    g = torch.full((10_000,), 1000.0, dtype=torch.float16)
    assert float(sum_of_squares([g])) == pytest.approx(1e10, rel=1e-5)
