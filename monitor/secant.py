"""Zero-extra-pass secant curvature of Adam along its own update direction (arXiv:2506.04805).

    λ_sec(t) = c_t · Δθ_tᵀ(g_{t+1} − g_t) / (Δθ_tᵀ D_t Δθ_t),    r_sec = η·(λ_sec + w)/2

On a quadratic g_{t+1} − g_t = H·Δθ_t exactly, so λ_sec is the Rayleigh quotient of Ĥ = c·D⁻¹H
in the D-metric along the update: a lower bound of λ_max(Ĥ), needing no extra forward or backward
pass. Gradients are the effective ones Adam uses (±g under ``maximize``, + wd·θ for coupled L2),
w is AdamW's decoupled decay (see :mod:`monitor.curvature` for the stability ratio). With several
groups, λ_sec = Σ Δθ·Δg / Σ (D/c)·Δθ² and r_sec = ½[Σ Δθ·Δg + Σ η·w·a·Δθ²]/Σ a·Δθ², a = D/(η·c).

No parameter-sized buffer is kept between steps. The estimator is driven from two hooks:

- :meth:`SecantEstimator.after_step` — optimizer *post-step* hook of step t (state at t, parameters
  θ_{t+1}, ``.grad`` still g_t): rebuilds Δθ_t from m_t, v_t, η, wd and keeps the scalar Δθ_tᵀg_t.
- :meth:`SecantEstimator.before_step` — optimizer *pre-step* hook of step t+1 (state still at t,
  parameters θ_{t+1}, ``.grad`` g_{t+1}): rebuilds Δθ_t again from the same state and returns the
  reading for step t.

Only 0-d device tensors and Python ints persist. Nothing here synchronises with the device.
A reading is ``None`` when the pair does not match (a skipped step, e.g. an AMP overflow, or a
different parameter set); the estimate is on the *previous* update, one step behind λ_grad.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from spikewatch.monitor.adam_state import ParamView, c_t

__all__ = ["SecantEstimator", "SecantReading"]


@dataclass(frozen=True, slots=True)
class SecantReading:
    """Secant curvature along the update of ``step`` (0-d float32 device tensors).

    ``step`` is the optimizer step that made the update (the largest per-parameter count).
    """

    step: int
    lambda_secant: Tensor
    stability_ratio: Tensor


@dataclass(frozen=True, slots=True)
class _Sums:
    """0-d float32 reductions over one parameter of its rebuilt update Δθ_t (state at t)."""

    dtheta_g: Tensor  # Δθ·g with g the raw ``.grad`` (sign of ``maximize`` not applied)
    dtheta_theta: Tensor | None  # Δθ·θ_{t+1}; only for coupled L2
    dtheta_sq: Tensor | None  # Δθ·Δθ; only for coupled L2
    d_dtheta_sq: Tensor | None  # Δθᵀ D Δθ; only when asked


def _sums(v: ParamView, *, with_metric: bool) -> _Sums:
    """Rebuild Δθ_t = θ_{t+1} − θ_t from the state at t and reduce it, in about eight passes.

    Same algebra as :func:`monitor.adam_state.rebuild_update`, fused: with D = √(v/b2) + ε,
    Δθ_adam = −η·m/(b1·D), and AdamW's decay a = η·wd, Δθ = (Δθ_adam − a·θ_{t+1})/(1 − a).
    """
    h = v.hyper
    if v.grad is None or v.exp_avg is None or v.exp_avg_sq is None:
        raise ValueError(f"parameter {v.name!r} has no gradient or no Adam state")
    b1, b2 = 1.0 - h.beta1**v.step, 1.0 - h.beta2**v.step
    d = v.exp_avg_sq.float().div(b2).sqrt_().add_(h.eps)
    dtheta = v.exp_avg.float().div(d).mul_(-h.lr / b1)
    theta = v.param.detach()
    decay = h.lr * h.weight_decay if h.decoupled_wd else 0.0
    if decay != 0.0:
        dtheta.add_(theta, alpha=-decay).div_(1.0 - decay)
    flat = dtheta.view(-1)
    coupled = h.weight_decay != 0.0 and not h.decoupled_wd
    return _Sums(
        dtheta_g=torch.dot(flat, v.grad.detach().float().reshape(-1)),
        dtheta_theta=torch.dot(flat, theta.float().reshape(-1)) if coupled else None,
        dtheta_sq=torch.dot(flat, flat) if coupled else None,
        d_dtheta_sq=torch.dot(d.mul_(dtheta).view(-1), flat) if with_metric else None,
    )


def _dot_effective_grad(v: ParamView, s: _Sums) -> Tensor:
    """Δθ_t·g_eff with g_eff = ±g + wd·θ_{t+1}: the effective gradient at the current point."""
    h = v.hyper
    out = -s.dtheta_g if h.maximize else s.dtheta_g
    if s.dtheta_theta is not None:
        out = out + h.weight_decay * s.dtheta_theta
    return out


def _key(views: Sequence[ParamView]) -> tuple[int, ...]:
    return tuple(id(v.param) for v in views)


class SecantEstimator:
    """Stateful secant estimator; keeps one scalar and a step number between its two hooks."""

    def __init__(self) -> None:
        self._steps: tuple[int, ...] = ()  # per-parameter step counts seen by after_step
        self._key: tuple[int, ...] = ()
        self._dtheta_dot_g: Tensor | None = None

    def reset(self) -> None:
        """Forget the pending half-measurement."""
        self._steps = ()
        self._dtheta_dot_g = None

    @staticmethod
    def _check(views: Sequence[ParamView]) -> None:
        if not views:
            raise ValueError("no parameters to measure")
        for v in views:
            if v.grad is None:
                raise ValueError(f"parameter {v.name!r} has no gradient; pass only updated ones")

    def after_step(self, views: Sequence[ParamView]) -> None:
        """Post-step hook of step t: keep the scalar Δθ_tᵀ g_t."""
        self._check(views)
        steps = tuple(v.step for v in views)
        if 0 in steps:
            self.reset()  # a parameter has not been stepped yet: no update to measure
            return
        terms = []
        for v in views:
            s = _sums(v, with_metric=False)
            term = _dot_effective_grad(v, s)
            if s.dtheta_sq is not None:
                # g_t's L2 term is wd·θ_t = wd·(θ_{t+1} − Δθ_t), not wd·θ_{t+1}
                term = term - v.hyper.weight_decay * s.dtheta_sq
            terms.append(term)
        self._dtheta_dot_g = torch.stack(terms).sum()
        self._steps = steps
        self._key = _key(views)

    def before_step(self, views: Sequence[ParamView]) -> SecantReading | None:
        """Pre-step hook of step t+1: the secant reading for step t, or None if unmatched."""
        self._check(views)
        pending, prev = self._steps, self._dtheta_dot_g
        self.reset()
        if prev is None or self._key != _key(views):
            return None
        if tuple(v.step for v in views) != pending:
            return None  # a step happened in between (or none did): the state moved on
        num, den_c, den_eta, den_decay = [], [], [], []
        for v in views:
            h = v.hyper
            s = _sums(v, with_metric=True)
            assert s.d_dtheta_sq is not None
            c = c_t(h.beta1, v.step)
            num.append(_dot_effective_grad(v, s))
            den_c.append(s.d_dtheta_sq / c)
            if h.lr > 0.0:
                a_sum = s.d_dtheta_sq / (h.lr * c)
                den_eta.append(a_sum)
                w = h.weight_decay if h.decoupled_wd else 0.0
                den_decay.append(h.lr * w * a_sum)
        tiny = torch.finfo(torch.float32).tiny
        curv = torch.stack(num).sum() - prev
        lam = curv / torch.clamp(torch.stack(den_c).sum(), min=tiny)
        if den_eta:
            q = torch.clamp(torch.stack(den_eta).sum(), min=tiny)
            ratio = (curv + torch.stack(den_decay).sum()) / (2.0 * q)
        else:
            ratio = torch.zeros_like(lam)
        return SecantReading(step=max(pending), lambda_secant=lam, stability_ratio=ratio)
