"""Hessian-vector-product backends against torch.autograd.functional.hessian."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from spikewatch.monitor.hvp import ExactHVP, FiniteDifferenceHVP


def _problem(dtype: torch.dtype) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).to(dtype)
    x = torch.randn(16, 2, dtype=dtype)
    y = torch.sin(x.sum(1, keepdim=True))
    return model, x, y


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    out: Tensor = model(x)
    return ((out - y) ** 2).mean()


def _full_hessian(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(theta: Tensor) -> Tensor:
        chunks = theta.split(sizes)  # type: ignore[no-untyped-call]
        parts = [c.reshape(s) for c, s in zip(chunks, shapes, strict=True)]
        out: Tensor = functional_call(model, dict(zip(names, parts, strict=True)), (x,))
        return ((out - y) ** 2).mean()

    h = torch.autograd.functional.hessian(f, flat)  # type: ignore[no-untyped-call]
    assert isinstance(h, Tensor)
    return h


def _flat(vs: list[Tensor]) -> Tensor:
    return torch.cat([v.reshape(-1).double() for v in vs])


def _random_vectors(params: Sequence[Tensor], seed: int = 3) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]


def test_exact_hvp_matches_full_hessian() -> None:
    model, x, y = _problem(torch.float64)
    params = list(model.parameters())
    hess = _full_hessian(model, x, y)
    backend = ExactHVP(_loss(model, x, y), params)
    for seed in range(3):
        v = _random_vectors(params, seed)
        hv = backend(v)
        assert all(h.dtype == torch.float32 for h in hv)
        torch.testing.assert_close(_flat(hv), hess @ _flat(v), rtol=1e-5, atol=1e-6)
    g = _flat(backend.gradient())
    loss = _loss(model, x, y)
    expected = _flat(list(torch.autograd.grad(loss, params)))
    torch.testing.assert_close(g, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("central", [True, False])
def test_finite_difference_hvp_matches_full_hessian(central: bool) -> None:
    model, x, y = _problem(torch.float32)
    params = list(model.parameters())
    hess = _full_hessian(model, x, y)
    backend = FiniteDifferenceHVP(lambda: _loss(model, x, y), params, central=central)
    for seed in range(3):
        v = _random_vectors(params, seed)
        got, want = _flat(backend(v)), hess.double() @ _flat(v)
        assert float((got - want).norm() / want.norm()) < 1e-2


def test_finite_difference_restores_params_and_grads_exactly() -> None:
    model, x, y = _problem(torch.float32)
    params = list(model.parameters())
    _loss(model, x, y).backward()  # type: ignore[no-untyped-call]
    grads_before = [p.grad for p in params]
    grad_values = [g.clone() for g in grads_before]  # type: ignore[union-attr]
    values = [p.detach().clone() for p in params]

    def noisy_closure() -> Tensor:
        model.zero_grad(set_to_none=False)  # a closure that touches .grad, like step(closure)
        loss = _loss(model, x, y)
        loss.backward(retain_graph=True)  # type: ignore[no-untyped-call]
        return loss

    for central in (True, False):
        backend = FiniteDifferenceHVP(noisy_closure, params, central=central)
        backend(_random_vectors(params))
        for p, v, g, gv in zip(params, values, grads_before, grad_values, strict=True):
            assert torch.equal(p.detach(), v)  # bit-exact
            assert p.grad is g
            assert p.grad is not None
            assert torch.equal(p.grad, gv)


def test_finite_difference_restores_params_when_the_closure_fails() -> None:
    model, x, y = _problem(torch.float32)
    params = list(model.parameters())
    values = [p.detach().clone() for p in params]
    calls = {"n": 0}

    def closure() -> Tensor:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("boom")
        return _loss(model, x, y)

    backend = FiniteDifferenceHVP(closure, params)
    with pytest.raises(RuntimeError, match="boom"):
        backend(_random_vectors(params))
    assert all(torch.equal(p.detach(), v) for p, v in zip(params, values, strict=True))


def test_bad_inputs_are_refused() -> None:
    model, x, y = _problem(torch.float32)
    params = list(model.parameters())
    with torch.no_grad():
        detached = _loss(model, x, y)
    with pytest.raises(ValueError, match="no autograd graph"):
        ExactHVP(detached, params)
    with pytest.raises(ValueError, match="scalar"):
        ExactHVP((model(x) - y) ** 2, params)
    backend = ExactHVP(_loss(model, x, y), params)
    with pytest.raises(ValueError, match="one per parameter"):
        backend(_random_vectors(params)[:-1])
    wrong = _random_vectors(params)
    wrong[0] = wrong[0].reshape(-1)
    with pytest.raises(ValueError, match="shape"):
        backend(wrong)
    with pytest.raises(ValueError, match="rel_step"):
        FiniteDifferenceHVP(lambda: _loss(model, x, y), params, rel_step=0.0)
    fd = FiniteDifferenceHVP(lambda: (model(x) - y) ** 2, params)
    with pytest.raises(ValueError, match="scalar loss"):
        fd(_random_vectors(params))
    assert all(p.grad is None for p in params)


def test_unused_parameter_gets_zero_product() -> None:
    model, x, y = _problem(torch.float64)
    extra = nn.Parameter(torch.ones(2, dtype=torch.float64))
    params = [*model.parameters(), extra]
    hv = ExactHVP(_loss(model, x, y), params)(_random_vectors(params))
    assert torch.equal(hv[-1], torch.zeros(2))
