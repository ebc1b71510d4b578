"""ρ of the gradient about to be applied (`monitor.runaway`): the same number the two-secant
reading gives for that gradient two steps later, read before the update; armed only by a
gradient that outgrew √v̂ (ρ ≥ 2), and never read where it would need a host synchronisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spikewatch.monitor.runaway import ARM_RHO, HOLD, WINDOW, RunawayWatch
from spikewatch.monitor.two_secant import TwoSecant


def _job(dtype: torch.dtype = torch.float32, beta2: float = 0.999, groups: int = 1
         ) -> tuple[nn.Module, torch.optim.Adam, torch.Tensor, torch.Tensor]:  # fmt: skip
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1)).to(dtype)
    params = list(model.parameters())
    if groups == 1:
        opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, beta2))
    else:  # two groups with their own β1 and β2
        opt = torch.optim.Adam([{"params": params[:2], "betas": (0.9, beta2)},
                                {"params": params[2:], "betas": (0.8, 0.99)}], lr=1e-3)
    x, y = torch.randn(64, 8, dtype=dtype), torch.randn(64, 1, dtype=dtype)
    return model, opt, x, y


def _backward(model: nn.Module, opt: torch.optim.Adam, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()  # type: ignore[no-untyped-call]


def _settle(model: nn.Module, opt: torch.optim.Adam, x: torch.Tensor, y: torch.Tensor,
            est: TwoSecant, watch: RunawayWatch, steps: int) -> list[float | None]:
    """`steps` ordinary steps, the predictor computing at each; the watch's applied ρ."""
    out = []
    for k in range(steps):
        _backward(model, opt, x, y)
        opt.step()
        est.update(k + 1)
        out.append(watch.after_step(k))
    return out


@pytest.mark.parametrize("groups", [1, 2])
def test_it_is_the_readings_rho_of_the_same_gradient_read_before_its_update(groups: int) -> None:
    model, opt, x, y = _job(groups=groups)
    est = TwoSecant(opt, smoothing=0.0)  # the reading's ρ of one gradient, not an average
    watch = RunawayWatch(est, arm_rho=0.0)  # always armed
    now: dict[int, float] = {}  # completed steps before the update → ρ_now of its gradient
    read: dict[int, float] = {}
    for k in range(40):
        _backward(model, opt, x, y * (30.0 if k >= 25 else 1.0))  # a jump: ρ grows
        rho = watch.before_step(k, opt)
        if rho is not None:
            now[k] = rho
        opt.step()
        r = est.update(k + 1)  # the reading of gradient k − 1 (`completed − 2`)
        if r is not None:
            read[r.step] = r.host()[0][2]  # type: ignore[index]
        watch.after_step(k)
    common = sorted(set(now) & set(read))
    assert len(common) >= 30
    for k in common:
        assert now[k] == pytest.approx(read[k], rel=1e-4), k
    assert max(v for k, v in now.items() if k < 25) < 1.1
    assert max(now.values()) > 3.0  # the jump is in the comparison


def test_armed_by_the_gradient_just_applied_and_only_for_hold_pre_steps() -> None:
    """(Where the predictor computed at that step; a step only recorded arms nothing.)"""
    model, opt, x, y = _job()
    est = TwoSecant(opt)
    watch = RunawayWatch(est)
    shock = 60
    applied: dict[int, float | None] = {}
    for k in range(shock + HOLD + 5):
        _backward(model, opt, x, y * (1000.0 if k == shock else 1.0))  # one outlier gradient
        watch.before_step(k, opt)
        opt.step()
        est.update(k + 1)
        applied[k] = watch.after_step(k)
    assert watch.reads > 0
    calm = [r for k, r in applied.items() if 10 <= k < shock and r is not None]
    assert calm
    assert max(calm) < ARM_RHO  # a settled run never arms it
    shocked = applied[shock]
    assert shocked is not None
    assert shocked >= ARM_RHO
    # armed at the shock; read at the pre-steps after it until the hold ends (longer if the
    # gradients after it still outgrow v)
    assert watch.armed_until >= shock + HOLD
    assert watch.reads <= watch.armed_until - shock


def test_a_settled_run_never_reads_the_gradient() -> None:
    model, opt, x, y = _job()
    est = TwoSecant(opt)
    watch = RunawayWatch(est)
    for k in range(200):
        _backward(model, opt, x, y)
        assert watch.before_step(k, opt) is None
        opt.step()
        est.update(k + 1)
        watch.after_step(k)
    assert watch.reads == 0


def test_not_read_where_it_would_need_a_host_synchronisation_or_cannot_be_read() -> None:
    model, opt, x, y = _job(dtype=torch.bfloat16)  # no numpy type: torch arrays, as on a GPU
    est = TwoSecant(opt)
    watch = RunawayWatch(est, arm_rho=0.0)
    for k in range(6):
        _backward(model, opt, x, y)
        assert watch.before_step(k, opt) is None
        opt.step()
        est.update(k + 1)
        assert watch.after_step(k) is None
    assert not watch.readable
    sgd_model, _, x, y = _job()
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=1e-2, momentum=0.9)
    est = TwoSecant(sgd)
    watch = RunawayWatch(est, arm_rho=0.0)
    for k in range(6):
        _backward(sgd_model, sgd, x, y)  # type: ignore[arg-type]
        sgd.step()
        est.update(k + 1)
    assert not watch.readable  # SGD keeps no second moment


def test_a_missing_or_non_finite_gradient_reads_nothing() -> None:
    model, opt, x, y = _job()
    est = TwoSecant(opt)
    watch = RunawayWatch(est, arm_rho=0.0)
    _settle(model, opt, x, y, est, watch, 6)
    first = next(iter(model.parameters()))
    assert first.grad is not None
    first.grad.fill_(math.nan)
    assert watch.before_step(6, opt) is None  # a broken gradient is not a runaway
    first.grad = None
    assert watch.before_step(6, opt) is None


def test_a_step_recorded_but_not_computed_arms_nothing() -> None:
    model, opt, x, y = _job()
    est = TwoSecant(opt)
    watch = RunawayWatch(est, arm_rho=0.0)
    applied = _settle(model, opt, x, y, est, watch, 6)
    assert all(r is not None for r in applied[2:])  # computed at every step: known
    _backward(model, opt, x, y * 1000.0)
    opt.step()
    est.record(7)  # a batch below the edge: computed later
    armed = watch.armed_until
    assert watch.after_step(6) is None
    assert watch.armed_until == armed  # (any ρ arms it at arm_rho 0: this one is unknown)


def test_after_a_crossing_a_step_only_recorded_is_computed_from_the_reads_of_m() -> None:
    model, opt, x, y = _job()
    est = TwoSecant(opt)
    watch = RunawayWatch(est)
    _settle(model, opt, x, y, est, watch, 30)
    _backward(model, opt, x, y * 3.0)
    opt.step()
    est.record(31)  # a batch below the edge: computed later
    assert watch.after_step(30) is None  # no crossing lately: not computed
    watch.crossed(30)
    assert watch.window_until == 30 + WINDOW
    from_m = watch.applied_rho(31)
    est.flush()
    exact = watch.applied_rho(31)  # the predictor's own sums for that gradient
    assert from_m is not None
    assert exact is not None
    assert exact > 1.5  # the step moved the gradient
    assert from_m == pytest.approx(exact, rel=0.02)  # Σv̂ one step older
    assert watch.applied_rho(32) is None  # a step it did not record
