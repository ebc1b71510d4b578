"""What the guard does to the optimizer: set a value for one step and put the user's back, raise
ε, lift Adam's v or catch it up to g². Called from `agent._guard_hooks.GuardHooks` in the
optimizer's step hooks."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from spikewatch.agent._ramp import RampMachine
from spikewatch.monitor.adam_state import UnsupportedOptimizer, adam_view

__all__ = ["Saved", "apply_eps", "apply_lr", "apply_ramps", "catch_up_v", "lift_v", "raised_eps",
           "restore_user_values"]


Saved = list[tuple[dict[str, Any], str, Any]]
"""(param group, key, the user's value) for each value the guard set for one step."""


def apply_lr(optimizer: Any, multiplier: float) -> Saved:
    """Scale every group's lr for this step; what `restore_user_values` needs to undo it."""
    saved: Saved = []
    for g in optimizer.param_groups:
        lr = g["lr"]
        saved.append((g, "lr", lr))
        g["lr"] = lr * multiplier  # a tensor lr stays a tensor on its device (no sync)
    return saved


def raised_eps(optimizer: Any, factor: float) -> float:
    """(1/factor − 1)·RMS(√v̂) over every coordinate with Adam state (v̂ what Adam divides by,
    bias-corrected): the ε that makes a coordinate at that RMS step `factor` as far (0.0 for
    another optimizer or without state). One float64 reduction per device, read once: on an
    accelerator a sync, made only at the step an action starts."""
    try:
        views = adam_view(optimizer)  # the state walk, steps read once per device
    except UnsupportedOptimizer:
        return 0.0
    sums: dict[Any, list[Any]] = {}
    count = 0
    for view in views:
        v = view.exp_avg_sq
        if v is None or view.step < 1:
            continue
        correction = 1.0 - view.hyper.beta2**view.step
        sums.setdefault(v.device, []).append(v.detach().sum(dtype=torch.float64) / correction)
        count += v.numel()
    total = sum(float(torch.stack(parts).sum()) for parts in sums.values())
    if count == 0 or not math.isfinite(total) or total <= 0.0:
        return 0.0
    return (1.0 / factor - 1.0) * math.sqrt(total / count)


def apply_eps(optimizer: Any, raised: float, weight: float) -> Saved:
    """Raise every group's ε toward `raised` by `weight` for this step (never lower it); what
    `restore_user_values` needs to undo it."""
    saved: Saved = []
    for g in optimizer.param_groups:
        eps = g.get("eps")
        if isinstance(eps, float) and raised > eps:
            saved.append((g, "eps", eps))
            g["eps"] = eps + (raised - eps) * weight
    return saved


def apply_ramps(optimizer: Any, ramps: RampMachine, step: int) -> Saved:
    """Set the ramped values of this step (`agent._ramp`); what `restore_user_values` needs to
    undo it."""
    saved: Saved = []
    for r in ramps.due(step):
        g = optimizer.param_groups[r.change.group]
        if r.change.hparam == "lr":
            saved.append((g, "lr", g["lr"]))
            g["lr"] = r.value(g["lr"], step)
        elif isinstance(g.get("betas"), tuple | list):
            saved.append((g, "betas", g["betas"]))
            b1, b2 = g["betas"]
            g["betas"] = (r.value(b1, step), b2)
        elif "momentum" in g:
            saved.append((g, "momentum", g["momentum"]))
            g["momentum"] = r.value(g["momentum"], step)
    return saved


def restore_user_values(saved: Saved) -> None:
    """Put back the user's values (in reverse: the first saved is the user's own)."""
    for g, key, value in reversed(saved):
        g[key] = value


def lift_v(optimizer: Any, factor: float, group: int | None = None) -> int:
    """Multiply Adam's exp_avg_sq by 1/factor² (the step shrinks by `factor`), of every param or
    of param group `group`'s; tensors touched."""
    scale = 1.0 / (factor * factor)
    groups = optimizer.param_groups if group is None else [optimizer.param_groups[group]]
    n = 0
    for _, _, _, v in _second_moments(optimizer, groups):
        v.mul_(scale)
        n += 1
    return n


def _second_moments(optimizer: Any, groups: list[dict[str, Any]]
                    ) -> Iterator[tuple[dict[str, Any], Tensor, dict[str, Any], Tensor]]:
    """(group, param, its state, its exp_avg_sq) of every param of `groups` with Adam's v."""
    for g in groups:
        for p in g["params"]:
            state = optimizer.state.get(p)
            v = state.get("exp_avg_sq") if isinstance(state, dict) else None
            if v is not None:
                yield g, p, state, v


def catch_up_v(optimizer: Any) -> int:
    """Raise Adam's exp_avg_sq to at least g²·(1 − β2^t) on every coordinate, g the gradient
    this step applies and t the step count it makes, so that v̂ ≥ g² after the update: no
    coordinate then steps much more than lr (|m̂| ≲ |g|). Where v is larger, or g is not finite,
    v stays. Device operations only (a step count kept on the device stays there: no host
    sync); tensors touched."""
    n = 0
    for g, p, state, v in _second_moments(optimizer, optimizer.param_groups):
        betas, grad = g.get("betas"), p.grad
        if (not isinstance(betas, tuple | list) or len(betas) != 2 or grad is None
                or grad.is_sparse or v.shape != grad.shape):
            continue
        # Adam's bias correction for the step it is about to make; a tensor step or β2
        # (capturable, fused) stays a tensor where it is: no host sync
        correction = 1.0 - betas[1] ** (state.get("step", 0) + 1)
        # a non-finite gradient coordinate leaves its v alone (v = inf or NaN for good)
        g2 = torch.nan_to_num(grad.detach().to(v.dtype).square(), nan=0.0, posinf=0.0)
        g2.mul_(correction.to(v.dtype) if isinstance(correction, torch.Tensor)
                else float(correction))
        torch.maximum(v, g2, out=v)
        n += 1
    return n
