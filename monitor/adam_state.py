"""Read a live ``torch.optim.Adam`` / ``AdamW`` as per-parameter views, and Adam's bias corrections.

Supported: ``Adam`` and ``AdamW`` (and subclasses) in their for-loop, foreach and fused variants,
``amsgrad``, ``maximize``, coupled L2 (Adam ``weight_decay``) and decoupled weight decay
(``AdamW`` or ``Adam(decoupled_weight_decay=True)``), parameters in any floating dtype. Every
derived quantity is returned in float32, whatever the dtype of the parameter or its state.

Refused, with :class:`UnsupportedOptimizer`: every other optimizer, SGD with momentum included.
SGD's stability threshold is a different one (2(1+μ)/η on the raw Hessian, no preconditioner), and
the curvature signals here are defined for Adam's preconditioned Hessian only.

Measurement moment. The agent calls the curvature probes from an optimizer *pre-step* hook: the
parameters are θ_t, ``.grad`` holds g_t, and the optimizer state still holds m_{t-1}, v_{t-1} and
the completed step count t-1. The step about to run is t = ``view.step + 1``; pass
``include_current_grad=True`` to get exactly the v̂_t and D_t that this step will divide by. From a
*post-step* hook (state already at t) pass ``include_current_grad=False``.

Host synchronisation: :func:`adam_view` returns ``step`` and the hyper-parameters as Python numbers
by design. A step counter kept on the CPU (the default) costs nothing to read; step counters on an
accelerator (``capturable=True`` or ``fused=True`` on CUDA) are gathered and copied in a single
transfer per device, never one per parameter. Nothing else here synchronises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "AdamHyper",
    "ParamView",
    "UnsupportedOptimizer",
    "adam_view",
    "bias_corrected_m",
    "bias_corrected_v",
    "c_t",
    "effective_grad",
    "preconditioner",
    "rebuild_update",
    "step_scale",
]


class UnsupportedOptimizer(TypeError):  # noqa: N818 - public name fixed by the agent contract
    """The optimizer is not one whose state spikewatch can read (only Adam/AdamW are)."""


@dataclass(frozen=True, slots=True)
class AdamHyper:
    """Hyper-parameters of one parameter group, as the optimizer will apply them."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    decoupled_wd: bool  # True: AdamW's θ ← θ(1 − η·wd); False: coupled L2, g ← g + wd·θ
    amsgrad: bool
    maximize: bool


@dataclass(frozen=True, slots=True)
class ParamView:
    """One parameter with its gradient and Adam state (tensors are the live ones, not copies).

    ``exp_avg_sq`` is what Adam divides by: the running max for AMSGrad. ``exp_avg_sq_ema`` is
    always the exponential average itself (needed to fold in the current gradient under AMSGrad).
    State tensors are ``None`` before the parameter's first step.
    """

    name: str
    param: Tensor
    grad: Tensor | None
    exp_avg: Tensor | None
    exp_avg_sq: Tensor | None
    step: int  # completed optimizer steps for this parameter; 0 before the first
    group_index: int
    hyper: AdamHyper
    exp_avg_sq_ema: Tensor | None = None


def _scalar(value: Any) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def _hyper(optimizer: torch.optim.Adam, group: Mapping[str, Any]) -> AdamHyper:
    beta1, beta2 = group["betas"]
    decoupled = bool(group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW)))
    return AdamHyper(
        lr=_scalar(group["lr"]),
        beta1=_scalar(beta1),
        beta2=_scalar(beta2),
        eps=_scalar(group["eps"]),
        weight_decay=_scalar(group["weight_decay"]),
        decoupled_wd=decoupled,
        amsgrad=bool(group.get("amsgrad", False)),
        maximize=bool(group.get("maximize", False)),
    )


def _refuse(optimizer: object) -> UnsupportedOptimizer:
    kind = type(optimizer).__name__
    hint = ""
    if isinstance(optimizer, torch.optim.SGD):
        hint = (
            " SGD (with or without momentum) is refused on purpose: its stability threshold "
            "2(1+μ)/η applies to the raw Hessian, while these signals measure Adam's "
            "preconditioned Hessian c_t·D⁻¹H."
        )
    return UnsupportedOptimizer(
        f"spikewatch cannot read the state of optimizer {kind!r}: supported are "
        f"torch.optim.Adam and torch.optim.AdamW (for-loop, foreach and fused; amsgrad, "
        f"maximize and weight decay included) and their subclasses.{hint}"
    )


def _read_steps(step_tensors: list[Tensor]) -> list[int]:
    """Completed step counts, copied to the host in one transfer per device (not per tensor)."""
    out: list[int] = [0] * len(step_tensors)
    by_device: dict[torch.device, list[int]] = {}
    for i, s in enumerate(step_tensors):
        by_device.setdefault(s.device, []).append(i)
    for device, idx in by_device.items():
        if device.type == "cpu":
            for i in idx:
                out[i] = round(float(step_tensors[i]))
        else:
            stacked = torch.stack([step_tensors[i].reshape(()).float() for i in idx]).cpu()
            for i, val in zip(idx, stacked.tolist(), strict=True):
                out[i] = round(val)
    return out


def adam_view(optimizer: object, names: Mapping[Tensor, str] | None = None) -> list[ParamView]:
    """Views of every parameter of an Adam/AdamW optimizer, in param-group order.

    Names come from ``names`` (parameter → name, e.g. ``{p: n for n, p in
    model.named_parameters()}``), else from the optimizer's own ``param_names`` (when it was built
    from named parameters), else ``"group{g}.param{i}"``. Raises :class:`UnsupportedOptimizer`
    for any other optimizer and ValueError for complex parameters.
    """
    if not isinstance(optimizer, torch.optim.Adam):
        raise _refuse(optimizer)
    entries: list[tuple[str, Tensor, int, AdamHyper, dict[str, Any]]] = []
    step_tensors: list[Tensor] = []
    step_slots: list[int] = []
    plain_steps: dict[int, int] = {}
    for g_idx, group in enumerate(optimizer.param_groups):
        hyper = _hyper(optimizer, group)
        group_names = group.get("param_names")
        for p_idx, p in enumerate(group["params"]):
            if names is not None and p in names:
                name = names[p]
            elif group_names is not None:
                name = str(group_names[p_idx])
            else:
                name = f"group{g_idx}.param{p_idx}"
            if p.is_complex():
                raise ValueError(
                    f"parameter {name!r} is complex: spikewatch's Adam signals support real "
                    "floating-point parameters only"
                )
            state = optimizer.state.get(p, {})
            slot = len(entries)
            step = state.get("step")
            if isinstance(step, Tensor):
                step_tensors.append(step)
                step_slots.append(slot)
            else:
                plain_steps[slot] = int(step or 0)
            entries.append((name, p, g_idx, hyper, state))
    steps = dict(plain_steps)
    steps.update(zip(step_slots, _read_steps(step_tensors), strict=True))
    views: list[ParamView] = []
    for slot, (name, p, g_idx, hyper, state) in enumerate(entries):
        ema = state.get("exp_avg_sq")
        divisor = state.get("max_exp_avg_sq") if hyper.amsgrad else ema
        views.append(
            ParamView(
                name=name,
                param=p,
                grad=p.grad,
                exp_avg=state.get("exp_avg"),
                exp_avg_sq=divisor,
                step=steps[slot],
                group_index=g_idx,
                hyper=hyper,
                exp_avg_sq_ema=ema,
            )
        )
    return views


def c_t(beta1: float, step: int) -> float:
    """Adam's curvature scale (1/(1−β1^t))·((1−β1)/(1+β1)) for the update of step ``step`` ≥ 1."""
    if step < 1:
        raise ValueError(f"c_t needs a step t >= 1, got {step}")
    return (1.0 / (1.0 - beta1**step)) * ((1.0 - beta1) / (1.0 + beta1))


def _update_step(view: ParamView, include_current_grad: bool) -> int:
    return view.step + 1 if include_current_grad else view.step


def effective_grad(view: ParamView) -> Tensor:
    """float32 gradient of the objective Adam minimises: ±g (maximize) plus coupled L2 wd·θ."""
    if view.grad is None:
        raise ValueError(f"parameter {view.name!r} has no gradient")
    g = view.grad.detach().float()
    if view.hyper.maximize:
        g = -g
    if view.hyper.weight_decay != 0.0 and not view.hyper.decoupled_wd:
        g = g + view.hyper.weight_decay * view.param.detach().float()
    return g


def _moment(view: ParamView, state: Tensor | None, new: Tensor | None, beta: float, what: str,
            *, fold: bool) -> Tensor:
    """float32 Adam moment: the stored `state` as it is, or (`fold`) with `new` folded in,
    β·state + (1−β)·new (just (1−β)·new before the first step has made the state)."""
    if fold:
        assert new is not None
        return new * (1.0 - beta) if state is None else state.float() * beta + new * (1.0 - beta)
    if state is None:
        raise ValueError(f"parameter {view.name!r} has no {what} state")
    return state.float()


def bias_corrected_v(view: ParamView, *, include_current_grad: bool) -> Tensor:
    """float32 v̂ = v/(1−β2^t) that Adam divides by (the AMSGrad max where it applies).

    ``include_current_grad=True`` (pre-step hook, state at t−1) folds in the current gradient:
    v_t = β2·v_{t−1} + (1−β2)·g_t², with g_t the effective gradient; for AMSGrad the running max
    of that. ``False`` (post-step hook) reads the stored v_t as it is.
    """
    h = view.hyper
    t = _update_step(view, include_current_grad)
    if t < 1:
        raise ValueError(
            f"parameter {view.name!r} has no Adam state yet: call from a pre-step hook with "
            "include_current_grad=True, or after the first step"
        )
    if include_current_grad:
        ema = view.exp_avg_sq_ema if view.exp_avg_sq_ema is not None else view.exp_avg_sq
        v = _moment(view, ema, effective_grad(view).square(), h.beta2, "exp_avg_sq", fold=True)
        if h.amsgrad and view.exp_avg_sq is not None:
            v = torch.maximum(v, view.exp_avg_sq.float())
    else:
        v = _moment(view, view.exp_avg_sq, None, h.beta2, "exp_avg_sq", fold=False)
    return v / (1.0 - h.beta2**t)


def preconditioner(view: ParamView, *, include_current_grad: bool) -> Tensor:
    """float32 D = √v̂ + ε, exactly the denominator of Adam's update (see `bias_corrected_v`)."""
    return bias_corrected_v(view, include_current_grad=include_current_grad).sqrt() + view.hyper.eps


def step_scale(view: ParamView, *, include_current_grad: bool) -> Tensor:
    """float32 P = η·c_t/D: the per-coordinate factor of Adam's linearised update Jacobian."""
    t = _update_step(view, include_current_grad)
    d = preconditioner(view, include_current_grad=include_current_grad)
    return (view.hyper.lr * c_t(view.hyper.beta1, t)) / d


def bias_corrected_m(view: ParamView, *, include_current_grad: bool) -> Tensor:
    """float32 m̂ = m/(1−β1^t); ``include_current_grad`` folds in g_t as `bias_corrected_v` does."""
    h = view.hyper
    t = _update_step(view, include_current_grad)
    if t < 1:
        raise ValueError(f"parameter {view.name!r} has no Adam state yet")
    m = _moment(view, view.exp_avg, effective_grad(view) if include_current_grad else None,
                h.beta1, "exp_avg", fold=include_current_grad)
    return m / (1.0 - h.beta1**t)


def rebuild_update(view: ParamView, *, include_current_grad: bool) -> Tensor:
    """float32 Δθ_t = θ_{t+1} − θ_t of Adam's step t, rebuilt from state, without any buffer.

    ``include_current_grad=True`` (pre-step hook: θ_t, g_t, state t−1) predicts the update the
    coming step will make; ``False`` (state at t, parameter already θ_{t+1}: a post-step hook, or
    the pre-step hook of step t+1 before anything is folded in) rebuilds the update just made.
    Decoupled weight decay is included: Δθ = −η·wd·θ_t − η·m̂_t/D_t.
    """
    h = view.hyper
    adam = (
        h.lr
        * bias_corrected_m(view, include_current_grad=include_current_grad)
        / preconditioner(view, include_current_grad=include_current_grad)
    )
    decay = h.lr * h.weight_decay if h.decoupled_wd else 0.0
    theta = view.param.detach().float()
    if decay == 0.0:
        return -adam
    if include_current_grad:
        return -decay * theta - adam
    # θ_{t+1} = (1 − η·wd)·θ_t − adam  ⇒  θ_t = (θ_{t+1} + adam)/(1 − η·wd)
    theta_t = (theta + adam) / (1.0 - decay)
    return theta - theta_t
