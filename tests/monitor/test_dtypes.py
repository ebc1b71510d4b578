"""Every signal of `monitor/` in float64, float16 and bfloat16 against the same float32 computation.

Issue 14, item 6. Each test builds a model (and its Adam state) in the dtype under test and a
float32 *twin* holding exactly the same values, cast: every difference between the two results is
then the measurement's own arithmetic, not the inputs' rounding. Results must be float32, and
equal to the twin's within a tolerance suited to the dtype: tight where the code reduces in
float32 (or float64) whatever the input, looser where the arithmetic itself runs in the dtype (the
Hessian-vector products differentiate the model in its own dtype).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from spikewatch.monitor._reduce import norms_f32
from spikewatch.monitor.adam_state import (
    adam_view,
    bias_corrected_m,
    bias_corrected_v,
    effective_grad,
    preconditioner,
    rebuild_update,
    step_scale,
)
from spikewatch.monitor.curvature import TopEigen, gradient_curvature
from spikewatch.monitor.hparams import HparamWatch
from spikewatch.monitor.hvp import ExactHVP, FiniteDifferenceHVP, default_rel_step
from spikewatch.monitor.overconfidence import overconfidence
from spikewatch.monitor.precond_decay import PreconditionerDecay
from spikewatch.monitor.secant import SecantEstimator
from spikewatch.monitor.spectral_alignment import SpectralAlignment
from spikewatch.monitor.spike_share import SpikeShare
from spikewatch.protocol.names import EventType

LOW = [torch.float64, torch.float16, torch.bfloat16]
ALL = [torch.float32, *LOW]


def _id(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


# relative error of the same float32 reductions over values that only differ by float64 → float32
# rounding, or not at all (fp16/bf16 values are exact in float32)
REDUCE_RTOL = 1e-5
# the model's own arithmetic in the dtype (forward, backward, double backward)
HVP_RTOL = {torch.float32: 1e-5, torch.float64: 1e-5, torch.float16: 5e-3,
            torch.bfloat16: 3e-2}
# finite differences in the dtype (central; forward differences are first order: more)
FD_RTOL = {torch.float32: 1e-3, torch.float64: 1e-3, torch.float16: 3e-2, torch.bfloat16: 1e-1}
FD_FORWARD_RTOL = {torch.float32: 5e-3, torch.float64: 5e-3, torch.float16: 1e-1,
                   torch.bfloat16: 3e-1}


def _close(got: Tensor, want: Tensor, rtol: float, atol: float = 0.0) -> None:
    assert got.dtype == torch.float32, got.dtype
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol,
                               equal_nan=True)


def adam_eps(dtype: torch.dtype) -> float:
    """Adam's ε for a model in `dtype`. In float16 g² underflows to 0 below |g| ≈ 2.4e-4 and the
    update becomes m/ε: a float32-sized ε (1e-6, let alone the default 1e-8, which rounds to 0)
    throws pure-fp16 training off in one step. That is Adam's fp16 problem, not the monitor's."""
    return 1e-3 if dtype == torch.float16 else 1e-6


# --- a model in the dtype and its float32 twin ---------------------------------------------------


@dataclass
class Twins:
    """`low` trains in the dtype; `twin` is a float32 copy of its parameters, gradients and
    Adam state, refreshed in place by `sync` (the twin's tensors keep their identity)."""

    low: nn.Sequential
    low_opt: torch.optim.Adam
    twin: nn.Sequential
    twin_opt: torch.optim.Adam
    x: Tensor
    y: Tensor

    def loss(self, model: nn.Module) -> Tensor:
        dtype = next(model.parameters()).dtype
        return nn.functional.cross_entropy(model(self.x.to(dtype)), self.y)

    def backward(self) -> None:
        """Gradients of the low model (the pre-step moment), copied into the twin."""
        self.low_opt.zero_grad()
        self.loss(self.low).backward()  # type: ignore[no-untyped-call]
        self.sync()

    def step(self) -> None:
        self.low_opt.step()
        self.sync()

    def sync(self) -> None:
        with torch.no_grad():
            for pl, pt in zip(self.low.parameters(), self.twin.parameters(), strict=True):
                pt.copy_(pl)
                pt.grad = None if pl.grad is None else pl.grad.float()
                for k, v in self.low_opt.state[pl].items():
                    self.twin_opt.state[pt][k].copy_(v)


def _twins(dtype: torch.dtype, cls: type[torch.optim.Adam] = torch.optim.Adam,
           **kw: Any) -> Twins:
    torch.manual_seed(0)
    low = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 8), nn.Tanh(),
                        nn.Linear(8, 3)).to(dtype)
    x = torch.randn(32, 5).to(dtype)
    y = torch.randint(0, 3, (32,))
    kw = {"lr": 1e-2, "eps": adam_eps(dtype), **kw}
    low_opt = cls(low.parameters(), **kw)
    for _ in range(3):
        low_opt.zero_grad()
        nn.functional.cross_entropy(low(x), y).backward()  # type: ignore[no-untyped-call]
        low_opt.step()
    twin = copy.deepcopy(low).float()
    twin_opt = cls(twin.parameters(), **kw)
    twin_opt.load_state_dict(low_opt.state_dict())  # state cast to the twin's float32
    t = Twins(low, low_opt, twin, twin_opt, x, y)
    t.backward()
    assert all(st["exp_avg_sq"].dtype == dtype for st in low_opt.state.values())
    assert all(st["exp_avg_sq"].dtype == torch.float32 for st in twin_opt.state.values())
    return t


OPTS: dict[str, tuple[type[torch.optim.Adam], dict[str, Any]]] = {
    "adam-forloop": (torch.optim.Adam, {"foreach": False}),
    "adam-l2-foreach": (torch.optim.Adam, {"foreach": True, "weight_decay": 0.1}),
    "adamw-amsgrad": (torch.optim.AdamW, {"amsgrad": True, "weight_decay": 0.1}),
}


# --- _reduce -------------------------------------------------------------------------------------


def test_norms_f32_of_mixed_dtypes_keep_their_order() -> None:
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(n, generator=gen) * s for n, s in ((100, 1.0), (7, 1e-3), (300, 50.0))]
    ts = [base[0].double(), base[1].bfloat16(), base[2].half(), base[0], base[2].double()]
    for order in (1.0, 2.0):
        got = norms_f32(ts, order)
        assert len(got) == len(ts)
        assert all(n.dtype == torch.float32 and n.ndim == 0 for n in got)
        want = [torch.linalg.vector_norm(t.double(), order) for t in ts]
        _close(torch.stack(got), torch.stack(want), rtol=1e-6)
    only_wide = norms_f32([base[0].double(), base[2].double()])
    _close(torch.stack(only_wide), torch.stack([base[0].double().norm(), base[2].double().norm()]),
           rtol=1e-7)
    # a float16 norm beyond fp16's largest value (65504) is formed in float32
    big = torch.full((10_000,), 1000.0, dtype=torch.float16)
    assert float(norms_f32([big])[0]) == pytest.approx(1e5, rel=1e-5)


# --- adam_state ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", LOW, ids=_id)
@pytest.mark.parametrize("opt", list(OPTS))
def test_adam_state_quantities(opt: str, dtype: torch.dtype) -> None:
    cls, kw = OPTS[opt]
    t = _twins(dtype, cls, **kw)
    for cur in (True, False):
        for a, b in zip(adam_view(t.low_opt), adam_view(t.twin_opt), strict=True):
            assert a.param.dtype == dtype
            _close(effective_grad(a), effective_grad(b), rtol=1e-6)
            for fn in (bias_corrected_v, preconditioner, step_scale, bias_corrected_m,
                       rebuild_update):
                _close(fn(a, include_current_grad=cur), fn(b, include_current_grad=cur),
                       rtol=1e-5, atol=1e-9)


# --- precond_decay -------------------------------------------------------------------------------


def _check_rho(a: Any, b: Any) -> None:
    for field in ("tensor_sum_g2", "tensor_sum_v", "tensor_rho", "group_rho", "group_decay",
                  "rho", "sqrt_v_norm", "decay", "sum_g2", "sum_v"):
        _close(getattr(a, field), getattr(b, field), rtol=REDUCE_RTOL)
    assert a.names == b.names
    assert a.step == b.step


@pytest.mark.parametrize("dtype", LOW, ids=_id)
@pytest.mark.parametrize("opt", list(OPTS))
@pytest.mark.parametrize("pre_step", [True, False], ids=["pre", "post"])
def test_precond_decay(opt: str, dtype: torch.dtype, pre_step: bool) -> None:
    cls, kw = OPTS[opt]
    t = _twins(dtype, cls, **kw)
    pd_low, pd_twin = (PreconditionerDecay(include_current_grad=pre_step) for _ in range(2))
    for i in range(3):
        if not pre_step:
            t.step()
        a, b = pd_low.update(t.low_opt), pd_twin.update(t.twin_opt)
        _check_rho(a, b)
        assert bool(torch.isfinite(a.decay)) == (i > 0)  # from the second measurement on
        if pre_step:
            t.step()
        t.backward()


@pytest.mark.parametrize("state_dtype", LOW, ids=_id)
def test_precond_decay_with_state_in_another_dtype(state_dtype: torch.dtype) -> None:
    """State kept in a dtype other than the parameters' (master-weight setups, loaded
    checkpoints), some tensors in one dtype and some in another."""
    t = _twins(torch.float32)
    for i, st in enumerate(t.low_opt.state.values()):
        if i % 2 == 0:
            st["exp_avg"] = st["exp_avg"].to(state_dtype)
            st["exp_avg_sq"] = st["exp_avg_sq"].to(state_dtype)
    t.sync()  # the twin holds the same (rounded) values in float32
    views = adam_view(t.low_opt)
    assert {v.exp_avg_sq.dtype for v in views if v.exp_avg_sq is not None} == {
        torch.float32, state_dtype}
    _check_rho(PreconditionerDecay().update(views), PreconditionerDecay().update(t.twin_opt))


# --- secant --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", LOW, ids=_id)
@pytest.mark.parametrize("opt", list(OPTS))
def test_secant(opt: str, dtype: torch.dtype) -> None:
    cls, kw = OPTS[opt]
    t = _twins(dtype, cls, **kw)
    lo, tw = SecantEstimator(), SecantEstimator()
    readings = 0
    for _ in range(4):
        a = lo.before_step(adam_view(t.low_opt))
        b = tw.before_step(adam_view(t.twin_opt))
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            readings += 1
            assert a.step == b.step
            # Δθ·g_{t+1} − Δθ·g_t cancels: compare at the scale of its terms
            _close(a.lambda_secant, b.lambda_secant, rtol=1e-4, atol=1e-4 * float(
                b.lambda_secant.abs()) + 1e-6)
            _close(a.stability_ratio, b.stability_ratio, rtol=1e-4, atol=1e-6)
            assert torch.isfinite(a.lambda_secant)
        t.step()
        lo.after_step(adam_view(t.low_opt))
        tw.after_step(adam_view(t.twin_opt))
        t.backward()
    assert readings == 3


# --- hvp -----------------------------------------------------------------------------------------


def _flat(vs: list[Tensor]) -> Tensor:
    return torch.cat([v.reshape(-1).double() for v in vs])


def _rel(got: list[Tensor], want: list[Tensor]) -> float:
    a, b = _flat(got), _flat(want)
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dtype", ALL, ids=_id)
def test_hvp_backends(dtype: torch.dtype) -> None:
    """Both backends in the dtype vs the exact product of the same (rounded) model in float64."""
    t = _twins(dtype)
    ref = copy.deepcopy(t.low).double()
    gen = torch.Generator().manual_seed(3)
    vs = [torch.randn(p.shape, generator=gen) for p in ref.parameters()]
    want = ExactHVP(t.loss(ref), list(ref.parameters()))(vs)
    params = list(t.low.parameters())
    exact = ExactHVP(t.loss(t.low), params)
    got = exact(vs)
    assert all(h.dtype == torch.float32 for h in got)
    assert _rel(got, want) < HVP_RTOL[dtype]
    assert all(g.dtype == torch.float32 for g in exact.gradient())
    for central in (True, False):
        fd = FiniteDifferenceHVP(lambda: t.loss(t.low), params, central=central)
        before = [p.detach().clone() for p in params]
        got = fd(vs)
        assert all(h.dtype == torch.float32 for h in got)
        assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
        tol = FD_RTOL[dtype] if central else FD_FORWARD_RTOL[dtype]
        assert _rel(got, want) < tol, (central, _rel(got, want))


def test_default_finite_difference_step_follows_the_coarsest_dtype() -> None:
    f32, f64 = [torch.zeros(1)], [torch.zeros(1, dtype=torch.float64)]
    bf16, f16 = [torch.zeros(1, dtype=torch.bfloat16)], [torch.zeros(1, dtype=torch.float16)]
    assert default_rel_step(f32, True) == 5e-3
    assert default_rel_step(f32, False) == 3e-4
    assert default_rel_step(f64, True) == 5e-3  # the loss may be float32 whatever the params
    assert default_rel_step(f16, True) == pytest.approx(0.03, rel=0.02)
    assert default_rel_step(f16, False) == pytest.approx(0.011, rel=0.02)
    assert default_rel_step(bf16, True) == pytest.approx(0.046, rel=0.02)
    assert default_rel_step(bf16, False) == pytest.approx(0.025, rel=0.02)
    assert default_rel_step(f32 + bf16, True) == default_rel_step(bf16, True)


# --- curvature -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", LOW, ids=_id)
@pytest.mark.parametrize("opt", list(OPTS))
def test_curvature_with_exact_hvp(opt: str, dtype: torch.dtype) -> None:
    cls, kw = OPTS[opt]
    t = _twins(dtype, cls, **kw)
    views_low, views_twin = adam_view(t.low_opt), adam_view(t.twin_opt)
    hvp_low = ExactHVP(t.loss(t.low), [v.param for v in views_low])
    hvp_twin = ExactHVP(t.loss(t.twin), [v.param for v in views_twin])
    a, b = gradient_curvature(views_low, hvp_low), gradient_curvature(views_twin, hvp_twin)
    rtol = 2 * HVP_RTOL[dtype]
    _close(a.lambda_grad, b.lambda_grad, rtol=rtol)
    _close(a.stability_ratio, b.stability_ratio, rtol=rtol)
    top_a = TopEigen(max_iters=10, tol=None)(views_low, hvp_low)
    top_b = TopEigen(max_iters=10, tol=None)(views_twin, hvp_twin)
    _close(top_a.lambda_max, top_b.lambda_max, rtol=rtol)
    _close(top_a.stability_ratio, top_b.stability_ratio, rtol=rtol)
    _close(top_a.grad_cos, top_b.grad_cos, rtol=5 * rtol, atol=5 * rtol)


@pytest.mark.parametrize("dtype", LOW, ids=_id)
def test_curvature_with_finite_differences(dtype: torch.dtype) -> None:
    t = _twins(dtype, torch.optim.AdamW, weight_decay=0.1)
    views_low, views_twin = adam_view(t.low_opt), adam_view(t.twin_opt)
    hvp_low = FiniteDifferenceHVP(lambda: t.loss(t.low), [v.param for v in views_low])
    hvp_twin = ExactHVP(t.loss(t.twin), [v.param for v in views_twin])
    a, b = gradient_curvature(views_low, hvp_low), gradient_curvature(views_twin, hvp_twin)
    _close(a.lambda_grad, b.lambda_grad, rtol=FD_RTOL[dtype])
    top_a = TopEigen(max_iters=10, tol=None)(views_low, hvp_low)
    top_b = TopEigen(max_iters=10, tol=None)(views_twin, hvp_twin)
    _close(top_a.lambda_max, top_b.lambda_max, rtol=FD_RTOL[dtype])


# --- forward-side and gradient-matrix signals ----------------------------------------------------


@pytest.mark.parametrize("dtype", LOW, ids=_id)
def test_spectral_alignment(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    w = (torch.randn(16, 12, generator=gen) + 0.5).to(dtype)
    lo, tw = SpectralAlignment(iters=3), SpectralAlignment(iters=3)
    for k in range(3):  # warm-started from the second call on
        x = (torch.randn(4, 50, 12, generator=gen) + 0.2 * k).to(dtype)
        a, b = lo.update(w, x), tw.update(w.float(), x.float())
        for field in ("mean", "sign_diversity", "sigma1"):
            _close(getattr(a, field), getattr(b, field), rtol=1e-6, atol=1e-7)
        assert torch.equal(a.hist, b.hist)
        assert a.rows == b.rows == 200
        assert int(a.nonfinite) == 0
        w = (w.float() * 1.01).to(dtype)


@pytest.mark.parametrize("dtype", LOW, ids=_id)
def test_spike_share(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    lo, tw = SpikeShare(), SpikeShare()
    spike = torch.outer(torch.randn(40, generator=gen), torch.randn(30, generator=gen))
    for k in range(3):
        g = (torch.randn(40, 30, generator=gen) * 0.1 + spike * (1 + k)).to(dtype)
        for shape in (g, g.t()):  # both orientations (the Gram matrix of the smaller side)
            a, b = lo.update(f"g{shape.shape}", shape), tw.update(f"g{shape.shape}", shape.float())
            _close(a.share, b.share, rtol=1e-6)
            _close(a.sigmas, b.sigmas, rtol=1e-6)
            assert 0.5 < float(a.share) <= 1.0


@pytest.mark.parametrize("dtype", LOW, ids=_id)
def test_overconfidence(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(6, 7, 10, generator=gen) * 4).to(dtype)
    logits[0, 0, 3] = -torch.inf  # a masked-out class
    mask = torch.rand(6, 7, generator=gen) > 0.2
    for m in (None, mask):
        a, b = overconfidence(logits, m), overconfidence(logits.float(), m)
        for field in ("max_prob", "entropy", "impurity", "logit_norm"):
            _close(getattr(a, field), getattr(b, field), rtol=1e-6)
        assert int(a.counted) == int(b.counted)
        assert int(a.nonfinite) == 0


# --- hparams -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL, ids=_id)
@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("sample", [1, 4], ids=["one-buffer", "four-buffers"])
def test_momentum_jump_measures_buffers_in_their_dtype(kind: str, dtype: torch.dtype,
                                                        sample: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)
    opt: torch.optim.Optimizer
    if kind == "adam":
        opt, key = torch.optim.Adam(model.parameters(), lr=1e-2, eps=adam_eps(dtype)), "exp_avg"
    else:
        opt, key = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9), "momentum_buffer"
    watch = HparamWatch(sample_tensors=sample, adam_buffer_norms=True)
    x = torch.randn(8, 4).to(dtype)
    for i in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        assert watch.before_step(opt, i + 1) == []
        opt.step()
        watch.after_step(opt)
    factor = 0.25
    for grp in opt.param_groups:  # β1 0.9 → 0.6, buffers rescaled by 1/4 by hand
        if kind == "adam":
            grp["betas"] = (0.6, grp["betas"][1])
        else:
            grp["momentum"] = 0.6
    for st in opt.state.values():
        st[key].mul_(factor)  # exact in every dtype (a power of two)
    events = [e for e in watch.before_step(opt, 4) if e.type == EventType.MOMENTUM_JUMP]
    assert len(events) == 1
    ratio = events[0].data["buffer_ratio"]
    assert isinstance(ratio, float)
    assert ratio == pytest.approx(factor, rel=1e-6)
