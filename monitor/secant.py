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

from monitor.adam_state import ParamView, c_t, effective_grad, preconditioner, rebuild_update

__all__ = ["SecantEstimator", "SecantReading"]


@dataclass(frozen=True, slots=True)
class SecantReading:
    """Secant curvature along the update of ``step`` (0-d float32 device tensors).

    ``step`` is the optimizer step that made the update (the largest per-parameter count).
    """

    step: int
    lambda_secant: Tensor
    stability_ratio: Tensor


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
            dtheta = rebuild_update(v, include_current_grad=False)
            g_next_point = effective_grad(v)  # uses θ_{t+1} for the coupled-L2 term
            h = v.hyper
            if h.weight_decay != 0.0 and not h.decoupled_wd:
                # g_t's L2 term is wd·θ_t = wd·(θ_{t+1} − Δθ_t); effective_grad used θ_{t+1}.
                g_next_point = g_next_point - h.weight_decay * dtheta
            terms.append((dtheta * g_next_point).sum())
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
            dtheta = rebuild_update(v, include_current_grad=False)
            d = preconditioner(v, include_current_grad=False)
            c = c_t(h.beta1, v.step)
            sq = dtheta.square()
            num.append((dtheta * effective_grad(v)).sum())
            den_c.append((d * sq).sum() / c)
            if h.lr > 0.0:
                a_sum = (d * sq).sum() / (h.lr * c)
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
