"""The zero-extra-pass secant is exact on a quadratic and keeps only scalars between steps."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from spikewatch.monitor.adam_state import adam_view
from spikewatch.monitor.secant import SecantEstimator, SecantReading

LR = 0.05
BETAS = (0.9, 0.99)


def _quadratic() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(7)
    q = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))[0]
    a = q @ torch.diag(torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float64)) @ q.T
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    return a, b


CASES: dict[str, tuple[type[torch.optim.Adam], dict[str, Any]]] = {
    "adam": (torch.optim.Adam, {}),
    "adam_l2": (torch.optim.Adam, {"weight_decay": 0.3}),
    "adamw": (torch.optim.AdamW, {"weight_decay": 0.5}),
    "amsgrad": (torch.optim.Adam, {"amsgrad": True}),
    "maximize": (torch.optim.Adam, {"maximize": True}),
    "fused": (torch.optim.AdamW, {"fused": True, "weight_decay": 0.1}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_secant_is_exact_on_a_quadratic(case: str) -> None:
    cls, kw = CASES[case]
    a, b = _quadratic()
    p1 = nn.Parameter(torch.linspace(-1, 1, 4, dtype=torch.float64))
    p2 = nn.Parameter(torch.tensor([0.7, -0.3], dtype=torch.float64))
    opt = cls([p1, p2], lr=LR, betas=BETAS, **kw)
    sign = -1.0 if kw.get("maximize") else 1.0
    wd = kw.get("weight_decay", 0.0)
    l2, w = (0.0, wd) if cls is torch.optim.AdamW else (wd, 0.0)
    est = SecantEstimator()
    readings: list[SecantReading] = []
    opt.register_step_post_hook(lambda o, *_: est.after_step(adam_view(o)))

    def pre(o: Any, *_: Any) -> None:
        r = est.before_step(adam_view(o))
        if r is not None:
            readings.append(r)

    opt.register_step_pre_hook(pre)
    expected: dict[int, tuple[float, float]] = {}
    for t in range(1, 9):
        opt.zero_grad()
        theta = torch.cat([p1, p2])
        loss = sign * (0.5 * theta @ a @ theta + b @ theta)
        loss.backward()  # type: ignore[no-untyped-call]
        before = torch.cat([p1, p2]).detach().clone()
        opt.step()
        dtheta = torch.cat([p1, p2]).detach() - before
        st = [opt.state[p] for p in (p1, p2)]
        key = "max_exp_avg_sq" if kw.get("amsgrad") else "exp_avg_sq"
        v = torch.cat([s[key] for s in st]) / (1 - BETAS[1] ** t)
        d = v.sqrt() + 1e-8
        c = (1 / (1 - BETAS[0] ** t)) * (1 - BETAS[0]) / (1 + BETAS[0])
        h_eff = a + l2 * torch.eye(6, dtype=torch.float64)
        lam = float(c * dtheta @ h_eff @ dtheta / (dtheta @ (d * dtheta)))
        expected[t] = (lam, LR * (lam + w) / 2)
    # the reading for step t arrives at the pre-step hook of t+1: steps 1..7 of 8
    assert [r.step for r in readings] == list(range(1, 8))
    for r in readings:
        lam, ratio = expected[r.step]
        assert abs(float(r.lambda_secant) - lam) <= 1e-4 * abs(lam)
        assert abs(float(r.stability_ratio) - ratio) <= 1e-4 * abs(ratio)
        assert r.lambda_secant.dim() == 0
        assert r.lambda_secant.dtype == torch.float32


def test_only_scalars_persist_between_steps() -> None:
    p = nn.Parameter(torch.randn(1000))
    opt = torch.optim.Adam([p], lr=0.01)
    est = SecantEstimator()
    for _ in range(2):
        opt.zero_grad()
        (p**2).sum().backward()  # type: ignore[no-untyped-call]
        est.before_step(adam_view(opt))
        opt.step()
        est.after_step(adam_view(opt))
        tensors = [x for x in vars(est).values() if isinstance(x, Tensor)]
        assert tensors
        assert all(x.numel() == 1 for x in tensors)


def test_unmatched_pairs_give_no_reading() -> None:
    p = nn.Parameter(torch.randn(5))
    q = nn.Parameter(torch.randn(5))
    opt = torch.optim.Adam([p, q], lr=0.01)
    est = SecantEstimator()

    def grad() -> None:
        opt.zero_grad()
        ((p**2).sum() + (q**3).sum()).backward()  # type: ignore[no-untyped-call]

    grad()
    assert est.before_step(adam_view(opt)) is None  # nothing pending
    opt.step()
    est.after_step(adam_view(opt))
    grad()
    opt.step()  # a step the estimator did not see (as when the post hook was skipped)
    grad()
    assert est.before_step(adam_view(opt)) is None  # step count moved on: no stale reading
    est.after_step(adam_view(opt))
    grad()
    opt.step()
    est.after_step(adam_view(opt))
    grad()
    assert est.before_step(adam_view(opt)[:1]) is None  # different parameter set
    opt.step()
    est.after_step(adam_view(opt))
    grad()
    reading = est.before_step(adam_view(opt))
    assert reading is not None
    assert reading.step == 4
    assert est.before_step(adam_view(opt)) is None  # one reading per pair
    opt.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="no gradient"):
        est.after_step(adam_view(opt))
    with pytest.raises(ValueError, match="no parameters"):
        est.after_step([])


def test_parameters_with_different_step_counts() -> None:
    p = nn.Parameter(torch.randn(3))
    q = nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p, q], lr=0.01)
    est = SecantEstimator()

    def live() -> list[Any]:
        return [v for v in adam_view(opt) if v.grad is not None]

    def grad(with_q: bool) -> None:
        opt.zero_grad(set_to_none=True)
        ((p**2).sum() + ((q**4).sum() if with_q else 0.0)).backward()  # type: ignore[no-untyped-call]

    for with_q in (True, False, True):  # q misses step 2: its count lags p's
        grad(with_q)
        est.before_step(live())
        opt.step()
        est.after_step(live())
    grad(True)
    reading = est.before_step(live())
    assert [v.step for v in live()] == [3, 2]
    assert reading is not None
    assert reading.step == 3
    assert torch.isfinite(reading.lambda_secant)
