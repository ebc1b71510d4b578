"""Hessian-vector products H·v of a loss w.r.t. a list of parameters, behind one small interface.

Two backends, chosen by what the training code can give:

- :class:`ExactHVP` — double backward. Needs the *loss tensor with its graph still alive*
  (compute the loss, then build the backend before any ``backward()`` frees the graph, or call
  ``backward(retain_graph=True)``), and every op in the graph must support double backward.
  Exact to rounding. Cost per product: one extra backward through the gradient graph.
- :class:`FiniteDifferenceHVP` — difference of two gradients on the *same batch*:
  central ``(∇L(θ+hv) − ∇L(θ−hv))/2h`` or forward ``(∇L(θ+hv) − ∇L(θ))/h``. Needs a *closure*
  that recomputes the loss on the same batch (deterministically: no dropout draws, no BatchNorm
  running-stat updates that matter) and returns it *without* calling ``backward``; works where
  double backward does not (fused attention kernels, custom CUDA ops). The step h is scaled to the
  parameter norm: h = rel_step·max(‖θ‖, 1)/‖v‖. Parameters are restored bit-exactly from a
  temporary copy and ``.grad`` is left untouched. Cost per product: two (central) or one
  (forward) extra forward+backward passes. Accuracy is that of the parameter dtype (coarse in bf16):
  the default rel_step grows with the coarsest parameter dtype's ε (`default_rel_step`), since a
  float32-sized step is lost in the rounding of fp16/bf16 parameters.

The third estimate, the zero-extra-pass secant along the update direction, needs no backend and
lives in :mod:`monitor.secant`.

Vectors are lists of tensors shaped like the parameters; inputs of any float dtype are accepted,
results are float32. Nothing here synchronises with the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["HVP", "ExactHVP", "FiniteDifferenceHVP", "default_rel_step"]

Vectors = list[Tensor]
_F32_EPS = float(torch.finfo(torch.float32).eps)


class HVP(Protocol):
    """A Hessian-vector product of a fixed loss w.r.t. fixed parameters at the current point."""

    @property
    def params(self) -> Sequence[Tensor]:
        """The parameters, in the order of every vector list."""
        ...

    def gradient(self) -> Vectors:
        """float32 ∇L at the current point, on the same batch the products use."""
        ...

    def __call__(self, vectors: Sequence[Tensor]) -> Vectors:
        """float32 H·v for v given as one tensor per parameter."""
        ...


def _check_shapes(params: Sequence[Tensor], vectors: Sequence[Tensor]) -> None:
    if len(vectors) != len(params):
        raise ValueError(f"expected {len(params)} vectors (one per parameter), got {len(vectors)}")
    for i, (p, v) in enumerate(zip(params, vectors, strict=True)):
        if p.shape != v.shape:
            raise ValueError(f"vector {i} has shape {tuple(v.shape)}, parameter {tuple(p.shape)}")


class ExactHVP:
    """Exact H·v by double backward through ``loss``'s graph (see module docstring)."""

    def __init__(self, loss: Tensor, params: Sequence[Tensor]) -> None:
        if loss.numel() != 1:
            raise ValueError(f"loss must be a scalar, got shape {tuple(loss.shape)}")
        if loss.grad_fn is None:
            raise ValueError(
                "loss has no autograd graph: compute it with grad enabled and build ExactHVP "
                "before backward() frees the graph (or use backward(retain_graph=True))"
            )
        self._params = list(params)
        grads = torch.autograd.grad(loss, self._params, create_graph=True, allow_unused=True)
        self._grads = [
            torch.zeros_like(p) if g is None else g
            for p, g in zip(self._params, grads, strict=True)
        ]

    @property
    def params(self) -> Sequence[Tensor]:
        """The parameters, in the order of every vector list."""
        return self._params

    def gradient(self) -> Vectors:
        """float32 ∇L of the loss this backend was built on."""
        return [g.detach().float() for g in self._grads]

    def __call__(self, vectors: Sequence[Tensor]) -> Vectors:
        """float32 H·v, one extra backward through the gradient graph."""
        _check_shapes(self._params, vectors)
        outputs = [v.detach().to(g.dtype) for v, g in zip(vectors, self._grads, strict=True)]
        differentiable = [g.requires_grad for g in self._grads]
        if not any(differentiable):
            return [torch.zeros_like(p, dtype=torch.float32) for p in self._params]
        hv = torch.autograd.grad(
            [g for g, d in zip(self._grads, differentiable, strict=True) if d],
            self._params,
            grad_outputs=[o for o, d in zip(outputs, differentiable, strict=True) if d],
            retain_graph=True,
            allow_unused=True,
        )
        return [
            torch.zeros_like(p, dtype=torch.float32) if h is None else h.detach().float()
            for p, h in zip(self._params, hv, strict=True)
        ]


def default_rel_step(params: Sequence[Tensor], central: bool = True) -> float:
    """The relative finite-difference step for `params`.

    float32: 5e-3 central, 3e-4 forward (≈ ε^(1/3), ε^(1/2): balances truncation and rounding).
    Coarser parameter dtypes need a larger step, or the perturbation is lost in the parameters'
    own rounding (at float32's step a bf16 H·v is off by ~60%, forward ~5x): the step grows with
    the coarsest dtype's ε as (ε/ε_fp32)^(1/5) central, ^(2/5) forward, i.e. fp16 ≈ 0.03 and
    0.011, bf16 ≈ 0.046 and 0.025. The textbook exponents 1/3 and 1/2 overshoot into truncation
    error along the gradient, where the loss curves fastest (tests/monitor/test_dtypes.py: the
    exponents used keep H·v and λ_grad within ~1% in fp16, ~6% in bf16, central). Never below
    float32's step: the loss may be formed in float32 whatever the parameters' dtype.
    """
    eps = max((float(torch.finfo(p.dtype).eps) for p in params if p.is_floating_point()),
              default=_F32_EPS)
    scale = max(eps / _F32_EPS, 1.0)
    return 5e-3 * math.pow(scale, 0.2) if central else 3e-4 * math.pow(scale, 0.4)


class FiniteDifferenceHVP:
    """H·v from gradients at perturbed parameters on the same batch (see module docstring)."""

    def __init__(
        self,
        closure: Callable[[], Tensor],
        params: Sequence[Tensor],
        *,
        central: bool = True,
        rel_step: float | None = None,
    ) -> None:
        self._closure = closure
        self._params = list(params)
        self.central = central
        if rel_step is None:
            rel_step = default_rel_step(self._params, central)
        if not rel_step > 0:
            raise ValueError(f"rel_step must be positive, got {rel_step}")
        self.rel_step = rel_step
        self._base: Vectors | None = None

    @property
    def params(self) -> Sequence[Tensor]:
        """The parameters, in the order of every vector list."""
        return self._params

    def _grad_at_current(self) -> Vectors:
        saved = [p.grad for p in self._params]
        for p in self._params:
            p.grad = None  # a closure that calls backward() must not touch the caller's .grad
        try:
            with torch.enable_grad():
                loss = self._closure()
                if not isinstance(loss, Tensor) or loss.numel() != 1:
                    raise ValueError("the closure must return the scalar loss tensor")
                grads = torch.autograd.grad(loss, self._params, allow_unused=True)
        finally:
            for p, g in zip(self._params, saved, strict=True):
                p.grad = g
        return [
            torch.zeros_like(p, dtype=torch.float32) if g is None else g.detach().float()
            for p, g in zip(self._params, grads, strict=True)
        ]

    def gradient(self) -> Vectors:
        """float32 ∇L at the current point (one closure call, cached for this backend)."""
        if self._base is None:
            self._base = self._grad_at_current()
        return self._base

    def _grad_at(self, vectors: Sequence[Tensor], scale: Tensor) -> Vectors:
        with torch.no_grad():
            for p, v in zip(self._params, vectors, strict=True):
                p.add_((v.float() * scale).to(p.dtype))
        return self._grad_at_current()

    def __call__(self, vectors: Sequence[Tensor]) -> Vectors:
        """float32 H·v by two (central) or one (forward) extra gradient evaluations."""
        _check_shapes(self._params, vectors)
        base = None if self.central else self.gradient()  # before the parameters move
        with torch.no_grad():
            theta_norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.detach().float()) for p in self._params])
            )
            v_norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(v.detach().float()) for v in vectors])
            )
            h = self.rel_step * torch.clamp(theta_norm, min=1.0) / torch.clamp(v_norm, min=1e-30)
            saved = [p.detach().clone() for p in self._params]
        try:
            plus = self._grad_at(vectors, h)
            if self.central:
                with torch.no_grad():
                    for p, s in zip(self._params, saved, strict=True):
                        p.copy_(s)
                minus = self._grad_at(vectors, -h)
                denom = 2.0 * h
            else:
                assert base is not None
                minus = base
                denom = h
        finally:
            with torch.no_grad():
                for p, s in zip(self._params, saved, strict=True):
                    p.copy_(s)
        return [(a - b) / denom for a, b in zip(plus, minus, strict=True)]
