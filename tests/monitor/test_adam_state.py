"""Adam state reading against a hand-written Adam/AdamW step, across all torch variants."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from spikewatch.monitor.adam_state import (
    ParamView,
    UnsupportedOptimizer,
    adam_view,
    bias_corrected_m,
    bias_corrected_v,
    c_t,
    effective_grad,
    preconditioner,
    rebuild_update,
    step_scale,
)

VARIANTS: dict[str, dict[str, Any]] = {
    "forloop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}

CONFIGS: dict[str, tuple[type[torch.optim.Adam], dict[str, Any]]] = {
    "adam": (torch.optim.Adam, {}),
    "adam_l2": (torch.optim.Adam, {"weight_decay": 0.1}),
    "adam_decoupled": (torch.optim.Adam, {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    "adamw": (torch.optim.AdamW, {"weight_decay": 0.1}),
    "amsgrad": (torch.optim.Adam, {"amsgrad": True}),
    "adamw_amsgrad": (torch.optim.AdamW, {"amsgrad": True, "weight_decay": 0.05}),
    "maximize": (torch.optim.Adam, {"maximize": True, "weight_decay": 0.1}),
}


class RefAdam:
    """Textbook Adam/AdamW in float64 (Kingma & Ba; Loshchilov & Hutter for decoupled decay)."""

    def __init__(
        self,
        params: Sequence[Tensor],
        lr: float,
        betas: tuple[float, float],
        eps: float,
        wd: float,
        decoupled: bool,
        amsgrad: bool,
        maximize: bool,
    ) -> None:
        self.theta = [p.detach().double().clone() for p in params]
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.wd, self.decoupled, self.amsgrad, self.maximize = wd, decoupled, amsgrad, maximize
        self.m = [torch.zeros_like(t) for t in self.theta]
        self.v = [torch.zeros_like(t) for t in self.theta]
        self.vmax = [torch.zeros_like(t) for t in self.theta]
        self.t = 0

    def quantities(self, grads: list[Tensor]) -> list[dict[str, Tensor]]:
        """v̂, D, m̂ and Δθ the coming step will use (does not advance)."""
        t = self.t + 1
        out = []
        for i, g in enumerate(grads):
            g = g.double()
            if self.maximize:
                g = -g
            if self.wd and not self.decoupled:
                g = g + self.wd * self.theta[i]
            m = self.b1 * self.m[i] + (1 - self.b1) * g
            v = self.b2 * self.v[i] + (1 - self.b2) * g * g
            vd = torch.maximum(self.vmax[i], v) if self.amsgrad else v
            vhat = vd / (1 - self.b2**t)
            mhat = m / (1 - self.b1**t)
            d = vhat.sqrt() + self.eps
            dtheta = -self.lr * mhat / d
            if self.wd and self.decoupled:
                dtheta = dtheta - self.lr * self.wd * self.theta[i]
            out.append(
                {
                    "g": g,
                    "m": m,
                    "v": v,
                    "vd": vd,
                    "vhat": vhat,
                    "mhat": mhat,
                    "D": d,
                    "dtheta": dtheta,
                }
            )
        return out

    def step(self, grads: list[Tensor]) -> list[dict[str, Tensor]]:
        q = self.quantities(grads)
        for i, qi in enumerate(q):
            self.m[i], self.v[i], self.vmax[i] = qi["m"], qi["v"], qi["vd"]
            self.theta[i] = self.theta[i] + qi["dtheta"]
        self.t += 1
        return q


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(dtype)


def _batch(k: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(100 + k)
    return torch.randn(8, 3, generator=gen), torch.randn(8, 1, generator=gen)


def _loss(model: nn.Module, k: int) -> Tensor:
    x, y = _batch(k)
    p = next(model.parameters())
    out: Tensor = model(x.to(p.dtype))
    return ((out - y.to(p.dtype)) ** 2).mean()


def _close(a: Tensor, b: Tensor, rtol: float = 2e-5, atol: float = 1e-8) -> None:
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_views_match_hand_written_adam(variant: str, config: str) -> None:
    cls, kw = CONFIGS[config]
    model = _model()
    params = list(model.parameters())
    betas = (0.8, 0.95)
    opt = cls(params, lr=0.05, betas=betas, eps=1e-6, **kw, **VARIANTS[variant])
    ref = RefAdam(
        params,
        0.05,
        betas,
        1e-6,
        kw.get("weight_decay", 0.0),
        cls is torch.optim.AdamW or kw.get("decoupled_weight_decay", False),
        kw.get("amsgrad", False),
        kw.get("maximize", False),
    )
    for k in range(4):
        opt.zero_grad()
        _loss(model, k).backward()  # type: ignore[no-untyped-call]
        grads = [p.grad.detach().clone() for p in params]  # type: ignore[union-attr]
        # Pre-step: state at t-1, the views predict what step t will use.
        pre = adam_view(opt)
        expected = ref.quantities(grads)
        assert [v.step for v in pre] == [k] * len(params)
        for v, e in zip(pre, expected, strict=True):
            _close(effective_grad(v), e["g"])
            _close(bias_corrected_v(v, include_current_grad=True), e["vhat"])
            _close(preconditioner(v, include_current_grad=True), e["D"])
            _close(bias_corrected_m(v, include_current_grad=True), e["mhat"])
            _close(rebuild_update(v, include_current_grad=True), e["dtheta"], atol=1e-7)
            cd = c_t(betas[0], k + 1) / e["D"]
            _close(step_scale(v, include_current_grad=True), 0.05 * cd)
        before = [p.detach().clone() for p in params]
        opt.step()
        ref.step(grads)
        # Post-step: state at t, parameters θ_{t+1}.
        post = adam_view(opt)
        for v, e, p0, th in zip(post, expected, before, ref.theta, strict=True):
            assert v.step == k + 1
            _close(bias_corrected_v(v, include_current_grad=False), e["vhat"])
            _close(preconditioner(v, include_current_grad=False), e["D"])
            _close(rebuild_update(v, include_current_grad=False), e["dtheta"], atol=1e-7)
            _close(v.param.detach() - p0, e["dtheta"], atol=1e-7)
            _close(v.param.detach(), th, atol=1e-6)


def _trained_views(
    variant: dict[str, Any], dtype: torch.dtype = torch.float32, amsgrad: bool = False
) -> list[ParamView]:
    model = _model(dtype)
    opt = torch.optim.AdamW(
        model.parameters(), lr=0.02, weight_decay=0.1, amsgrad=amsgrad, **variant
    )
    for k in range(3):
        opt.zero_grad()
        _loss(model, k).backward()  # type: ignore[no-untyped-call]
        opt.step()
    opt.zero_grad()
    _loss(model, 3).backward()  # type: ignore[no-untyped-call]
    return adam_view(opt)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_all_variants_give_the_same_view(amsgrad: bool) -> None:
    views = {name: _trained_views(kw, amsgrad=amsgrad) for name, kw in VARIANTS.items()}
    base = views["forloop"]
    for name, other in views.items():
        assert len(other) == len(base), name
        for a, b in zip(base, other, strict=True):
            assert (a.name, a.step, a.group_index, a.hyper) == (
                b.name,
                b.step,
                b.group_index,
                b.hyper,
            )
            for fn in (bias_corrected_v, preconditioner, rebuild_update, bias_corrected_m):
                for cur in (True, False):
                    _close(
                        fn(b, include_current_grad=cur),
                        fn(a, include_current_grad=cur),
                        rtol=1e-5,
                        atol=1e-9,
                    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_give_fp32_quantities(dtype: torch.dtype) -> None:
    views = _trained_views({"foreach": False}, dtype=dtype)
    ref = _trained_views({"foreach": False})
    for v, r in zip(views, ref, strict=True):
        assert v.param.dtype == dtype
        assert v.exp_avg_sq is not None
        assert v.exp_avg_sq.dtype == dtype  # torch keeps the state in the parameter's dtype
        for fn in (bias_corrected_v, preconditioner, rebuild_update):
            out = fn(v, include_current_grad=True)
            assert out.dtype == torch.float32
            # Exactly the fp32 formula applied to the stored low-precision state:
            expected_v = (v.exp_avg_sq.float() * 0.999 + (1 - 0.999) * v.grad.float() ** 2) / (  # type: ignore[union-attr]
                1 - 0.999 ** (v.step + 1)
            )
            _close(bias_corrected_v(v, include_current_grad=True), expected_v, rtol=1e-6)
        # and close to the fp32 run at the dtype's precision
        _close(
            preconditioner(v, include_current_grad=True),
            preconditioner(r, include_current_grad=True),
            rtol=0.1,
            atol=1e-3,
        )


def test_fp32_state_for_low_precision_params_is_read_in_fp32() -> None:
    """Master-weight setups keep fp32 state beside bf16 weights: read without loss."""
    model = _model(torch.bfloat16)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    _loss(model, 0).backward()  # type: ignore[no-untyped-call]
    opt.step()
    for p in model.parameters():
        st = opt.state[p]
        st["exp_avg"] = st["exp_avg"].float() + 1e-3
        st["exp_avg_sq"] = st["exp_avg_sq"].float() + 1e-4
    for v in adam_view(opt):
        assert v.exp_avg_sq is not None
        _close(
            bias_corrected_v(v, include_current_grad=False), v.exp_avg_sq / (1 - 0.999), rtol=1e-7
        )


def test_before_first_step() -> None:
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.99))
    _loss(model, 0).backward()  # type: ignore[no-untyped-call]
    views = adam_view(opt)
    for v in views:
        assert v.step == 0
        assert v.exp_avg is None
        assert v.exp_avg_sq is None
        g = v.grad.float()  # type: ignore[union-attr]
        # t = 1: v̂ = (1−β2)g²/(1−β2) = g², m̂ = g, so D = |g| + ε and Δθ = −η·g/(|g|+ε)
        _close(bias_corrected_v(v, include_current_grad=True), g * g, rtol=1e-6)
        _close(rebuild_update(v, include_current_grad=True), -0.01 * g / (g.abs() + 1e-8))
        with pytest.raises(ValueError, match="no Adam state"):
            bias_corrected_v(v, include_current_grad=False)


def test_names_and_groups() -> None:
    model = _model()
    named = dict(model.named_parameters())
    groups: list[dict[str, Any]] = [
        {"params": [named["0.weight"], named["0.bias"]]},
        {"params": [named["2.weight"], named["2.bias"]], "lr": 0.5},
    ]
    opt = torch.optim.Adam(groups, lr=0.1)
    by_mapping = adam_view(opt, {p: n for n, p in named.items()})
    assert [v.name for v in by_mapping] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [v.group_index for v in by_mapping] == [0, 0, 1, 1]
    assert [v.hyper.lr for v in by_mapping] == [0.1, 0.1, 0.5, 0.5]
    default = adam_view(opt)
    assert [v.name for v in default] == [
        "group0.param0",
        "group0.param1",
        "group1.param0",
        "group1.param1",
    ]
    from_optimizer = adam_view(torch.optim.AdamW(model.named_parameters()))
    assert [v.name for v in from_optimizer] == list(named)
    assert all(v.hyper.decoupled_wd for v in from_optimizer)


def test_tensor_hyperparameters_are_read() -> None:
    model = _model()
    opt = torch.optim.Adam(
        model.parameters(), lr=torch.tensor(0.03), betas=(torch.tensor(0.85), torch.tensor(0.98))
    )
    h = adam_view(opt)[0].hyper
    assert math.isclose(h.lr, 0.03, rel_tol=1e-6)
    assert math.isclose(h.beta1, 0.85, rel_tol=1e-6)
    assert math.isclose(h.beta2, 0.98, rel_tol=1e-6)


def test_c_t() -> None:
    assert c_t(0.9, 1) == pytest.approx((1 / 0.1) * (0.1 / 1.9))
    assert c_t(0.9, 10_000) == pytest.approx(0.1 / 1.9)
    assert c_t(0.0, 5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="step"):
        c_t(0.9, 0)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: torch.optim.SGD(ps, lr=0.1),
        lambda ps: torch.optim.RMSprop(ps),
        lambda ps: torch.optim.Adagrad(ps),
    ],
    ids=["sgd_momentum", "sgd", "rmsprop", "adagrad"],
)
def test_unsupported_optimizer_is_refused(make: Any) -> None:
    opt = make(_model().parameters())
    with pytest.raises(UnsupportedOptimizer) as err:
        adam_view(opt)
    msg = str(err.value)
    assert type(opt).__name__ in msg
    assert "torch.optim.Adam" in msg
    assert "AdamW" in msg
    assert isinstance(err.value, TypeError)
    if isinstance(opt, torch.optim.SGD):
        assert "2(1+μ)/η" in msg
    with pytest.raises(UnsupportedOptimizer):
        adam_view(object())


def test_effective_grad_needs_a_gradient() -> None:
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="no gradient"):
        effective_grad(adam_view(opt)[0])


def test_complex_parameters_are_refused() -> None:
    z = nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="complex"):
        adam_view(torch.optim.Adam([z]))
