"""λ_grad, λ_max(Ĥ), alignment and stability ratio against the explicit preconditioned Hessian."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from spikewatch.monitor.adam_state import adam_view
from spikewatch.monitor.curvature import TopEigen, gradient_curvature, stability_ratio
from spikewatch.monitor.hvp import ExactHVP, FiniteDifferenceHVP

LR = 0.05
BETAS = (0.9, 0.99)
EPS = 1e-8


@dataclass
class Setup:
    model: nn.Module
    opt: torch.optim.Adam
    x: Tensor
    y: Tensor

    def loss(self) -> Tensor:
        out: Tensor = self.model(self.x)
        return ((out - self.y) ** 2).mean()


def _setup(
    dtype: torch.dtype,
    cls: type[torch.optim.Adam] = torch.optim.Adam,
    groups: bool = False,
    **kw: Any,
) -> Setup:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).to(dtype)
    x = torch.randn(24, 2, dtype=dtype)
    y = torch.sin(2 * x[:, :1]) * x[:, 1:]
    params: Any = model.parameters()
    if groups:
        params = [
            {"params": model[0].parameters()},
            {"params": model[2].parameters(), "lr": LR / 4},
        ]
    opt = cls(params, lr=LR, betas=BETAS, eps=EPS, **kw)
    s = Setup(model, opt, x, y)
    for _ in range(5):
        opt.zero_grad()
        s.loss().backward()  # type: ignore[no-untyped-call]
        opt.step()
    opt.zero_grad()
    s.loss().backward()  # type: ignore[no-untyped-call]  # pre-step moment of step 6: θ_6, g_6 present, state at 5
    return s


def _hessian(s: Setup) -> Tensor:
    names = [n for n, _ in s.model.named_parameters()]
    ps = list(s.model.parameters())
    sizes = [p.numel() for p in ps]

    def f(theta: Tensor) -> Tensor:
        chunks = theta.split(sizes)  # type: ignore[no-untyped-call]
        parts = [c.reshape(p.shape) for c, p in zip(chunks, ps, strict=True)]
        out: Tensor = functional_call(s.model, dict(zip(names, parts, strict=True)), (s.x,))
        return ((out - s.y) ** 2).mean()

    flat = torch.cat([p.detach().reshape(-1) for p in ps])
    h = torch.autograd.functional.hessian(f, flat)  # type: ignore[no-untyped-call]
    assert isinstance(h, Tensor)
    return h.double()


@dataclass
class Reference:
    lambda_grad: float
    lambda_max: float
    r_grad: float
    r_max: float
    cos: float


def _reference(s: Setup) -> Reference:
    """Explicit Ĥ from the raw optimizer state, independent of the module under test."""
    g_parts, d_parts, eta_parts, w_parts, c_parts = [], [], [], [], []
    sign, l2 = 1.0, 0.0
    for group in s.opt.param_groups:
        b1, b2 = group["betas"]
        decoupled = group["decoupled_weight_decay"]
        sign = -1.0 if group["maximize"] else 1.0
        l2 = 0.0 if decoupled else group["weight_decay"]
        for p in group["params"]:
            st = s.opt.state[p]
            t = int(st["step"]) + 1
            g = sign * p.grad.double() + l2 * p.detach().double()
            v = b2 * st["exp_avg_sq"].double() + (1 - b2) * g * g
            if group["amsgrad"]:
                v = torch.maximum(v, st["max_exp_avg_sq"].double())
            d = (v / (1 - b2**t)).sqrt() + group["eps"]
            c = (1 / (1 - b1**t)) * (1 - b1) / (1 + b1)
            g_parts.append(g.reshape(-1))
            d_parts.append(d.reshape(-1))
            eta_parts.append(torch.full((p.numel(),), group["lr"], dtype=torch.float64))
            wd = group["weight_decay"] if decoupled else 0.0
            w_parts.append(torch.full((p.numel(),), group["lr"] * wd, dtype=torch.float64))
            c_parts.append(torch.full((p.numel(),), c, dtype=torch.float64))
    g, d, eta, w, c = (torch.cat(x) for x in (g_parts, d_parts, eta_parts, w_parts, c_parts))
    h = sign * _hessian(s) + l2 * torch.eye(g.numel(), dtype=torch.float64)
    h_hat = (c / d)[:, None] * h
    lambda_grad = float(g @ h_hat @ g / (g @ g))
    sqrt_p = (eta * c / d).sqrt()
    s_eta = sqrt_p[:, None] * h * sqrt_p[None, :] + torch.diag(w)
    r_grad = float(g @ ((eta * c / d)[:, None] * h + torch.diag(w)) @ g / (g @ g)) / 2
    evals, evecs = torch.linalg.eigh(s_eta)
    r_max = float(evals[-1]) / 2
    eta0, w0 = float(eta[0]), float(w[0] / eta[0])
    pg = sqrt_p * g
    cos = float((pg @ evecs[:, -1]).abs() / pg.norm())
    return Reference(lambda_grad, 2 * r_max / eta0 - w0, r_grad, r_max, cos)


CASES: dict[str, tuple[type[torch.optim.Adam], dict[str, Any]]] = {
    "adam": (torch.optim.Adam, {}),
    "adam_l2": (torch.optim.Adam, {"weight_decay": 0.3}),
    "adamw": (torch.optim.AdamW, {"weight_decay": 0.5}),
    "amsgrad": (torch.optim.Adam, {"amsgrad": True}),
    "maximize": (torch.optim.Adam, {"maximize": True}),
    "groups": (torch.optim.AdamW, {"weight_decay": 0.2, "groups": True}),
}


def _rel(a: Tensor | float, b: float) -> float:
    return abs(float(a) - b) / abs(b)


@pytest.mark.parametrize("case", list(CASES))
def test_exact_backend_matches_explicit_preconditioned_hessian(case: str) -> None:
    cls, kw = CASES[case]
    s = _setup(torch.float64, cls, **kw)
    ref = _reference(s)
    views = adam_view(s.opt)
    hvp = ExactHVP(s.loss(), [v.param for v in views])
    gc = gradient_curvature(views, hvp)
    assert gc.lambda_grad.dtype == torch.float32
    assert gc.lambda_grad.dim() == 0
    assert _rel(gc.lambda_grad, ref.lambda_grad) < 1e-4
    assert _rel(gc.stability_ratio, ref.r_grad) < 1e-4
    top = TopEigen(max_iters=5000, tol=1e-5)(views, hvp)
    assert top.converged is True
    assert top.iterations > 1
    assert _rel(top.stability_ratio, ref.r_max) < 1e-4
    assert _rel(top.lambda_max, ref.lambda_max) < 1e-4
    assert abs(float(top.grad_cos) - ref.cos) < 1e-3
    if case != "groups":  # single group: r = η(λ + w)/2
        w = kw.get("weight_decay", 0.0) if cls is torch.optim.AdamW else 0.0
        assert _rel(stability_ratio(top.lambda_max, LR, w), ref.r_max) < 1e-4
        assert _rel(stability_ratio(gc.lambda_grad, LR, w), ref.r_grad) < 1e-4


def test_finite_difference_backend_within_one_percent() -> None:
    s = _setup(torch.float32)
    ref = _reference(s)
    views = adam_view(s.opt)
    hvp = FiniteDifferenceHVP(s.loss, [v.param for v in views])
    gc = gradient_curvature(views, hvp)
    assert _rel(gc.lambda_grad, ref.lambda_grad) < 1e-2
    top = TopEigen(max_iters=2000, tol=1e-5)(views, hvp)
    assert _rel(top.lambda_max, ref.lambda_max) < 1e-2


def test_warm_start_and_fixed_iterations() -> None:
    s = _setup(torch.float64)
    views = adam_view(s.opt)
    hvp = ExactHVP(s.loss(), [v.param for v in views])
    top = TopEigen(max_iters=5000, tol=1e-7)
    first = top(views, hvp)
    again = top(views, hvp)
    assert again.iterations <= 3 < first.iterations
    assert _rel(again.lambda_max, float(first.lambda_max)) < 1e-5
    fixed = TopEigen(max_iters=7, tol=None)
    out = fixed(views, hvp)
    assert out.iterations == 7
    assert out.converged is None
    top.reset()
    assert top(views, hvp).iterations == first.iterations


def test_negative_dominant_curvature_still_finds_top_positive() -> None:
    theta = nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))

    def loss() -> Tensor:
        return -3.0 * theta[0] ** 2 + 0.5 * theta[1] ** 2  # H = diag(-6, 1)

    opt = torch.optim.Adam([theta], lr=0.01)
    loss().backward()  # type: ignore[no-untyped-call]
    views = adam_view(opt)
    out = TopEigen(max_iters=200, tol=1e-10)(views, ExactHVP(loss(), [theta]))
    # first step: D = |g| + ε and c_1 = 1/(1+β1), so Ĥ = c_1·diag(-6/|g0|, 1/|g1|)
    g = theta.grad.abs()  # type: ignore[union-attr]
    assert _rel(out.lambda_max, 1.0 / (1.9 * float(g[1]))) < 1e-6
    assert out.converged is True


def test_mismatched_views_and_backend_are_refused() -> None:
    s = _setup(torch.float64)
    views = adam_view(s.opt)
    hvp = ExactHVP(s.loss(), [v.param for v in views][:-1])
    with pytest.raises(ValueError, match="same parameters"):
        gradient_curvature(views, hvp)
    with pytest.raises(ValueError, match="no parameters"):
        gradient_curvature([], hvp)
    with pytest.raises(ValueError, match="max_iters"):
        TopEigen(max_iters=0)


@pytest.mark.parametrize(("target", "grows"), [(0.97, False), (1.03, True)])
def test_stability_ratio_marks_the_edge_of_adamw_dynamics(target: float, grows: bool) -> None:
    """Momentum-EMA update with frozen D and decoupled decay on ½hθ²: diverges iff r > 1."""
    lr, wd, b1, d = 0.01, 5.0, 0.9, 0.02
    c = (1 - b1) / (1 + b1)
    lam = 2 * target / lr - wd  # λ(Ĥ) giving r = target
    h = lam * d / c
    assert stability_ratio(lam, lr, wd) == pytest.approx(target)
    theta, m = 1.0, 0.0
    for _ in range(1000):
        m = b1 * m + (1 - b1) * h * theta
        theta = (1 - lr * wd) * theta - lr * m / d
    assert (abs(theta) > 1e3) is grows
    assert (abs(theta) < 1e-3) is not grows
