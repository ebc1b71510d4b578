"""Preconditioner decay (arXiv:2506.04805): ρ = ‖g‖/‖√v̂‖ and the decay rate of ‖√v‖.

When ρ ≪ 1 the squared gradient adds almost nothing to v, so v decays like β2 per step, the
effective step η/√v̂ grows and the preconditioned curvature drifts past 2/η. ρ is reported per
tensor, per parameter group and globally, together with its partial sums Σg² and Σv̂ so that the
shards of a sharded job combine exactly on the server: ρ = √(Σ Σg² / Σ Σv̂) (Combine.SQRT_RATIO).

The decay rate compares ‖√v‖ between two measurements Δ steps apart, per step and in units of √β2:
    decay = (Σv_t / Σv_{t−Δ})^(1/(2Δ)) / √β2
on the raw exponential average v (bias correction factored out, the AMSGrad max not used), so pure
β2 decay (g = 0) reads exactly 1, a flat v reads 1/√β2 and anything above means v grows. The
global rate divides by Σ_groups β2^Δ·Σv_{t−Δ}, so groups with different β2 combine correctly.

Reductions use fused `torch._foreach_norm` kernels and results stay on the device (no host sync).
Parameters, gradients and state may be in any floating dtype: float32 and narrower ones reduce with
float32 accumulation, float64 in float64 (see `monitor._reduce.norms_f32`); results are float32.
Groups with coupled L2 weight decay (Adam `weight_decay`) or AMSGrad need the effective gradient or
the elementwise max, which cost one fp32 temporary per parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from spikewatch.monitor._reduce import norms_f32
from spikewatch.monitor.adam_state import ParamView, adam_view, bias_corrected_v, effective_grad

__all__ = ["PreconditionerDecay", "RhoResult"]


@dataclass(frozen=True, slots=True)
class RhoResult:
    """One measurement; all tensors fp32 on the parameters' (first) device."""

    names: tuple[str, ...]  # tensors measured (with a gradient and Adam state), row order below
    tensor_sum_g2: Tensor  # (n,) Σg² per tensor
    tensor_sum_v: Tensor  # (n,) Σv̂ per tensor (bias-corrected; the AMSGrad max where it applies)
    tensor_rho: Tensor  # (n,)
    groups: tuple[int, ...]  # parameter-group indices, row order below
    group_sum_g2: Tensor  # (G,)
    group_sum_v: Tensor  # (G,)
    group_rho: Tensor  # (G,)
    group_decay: Tensor  # (G,) NaN on the first measurement of a group
    sum_g2: Tensor
    sum_v: Tensor
    rho: Tensor
    sqrt_v_norm: Tensor  # ‖√v̂‖ = √Σv̂
    decay: Tensor  # global decay rate (NaN on the first measurement)
    step: int  # the step t whose v the measurement refers to (largest over groups)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """√(num/den) with den = 0 giving NaN unless num = 0 too (then 0)."""
    out = (num / den).sqrt()
    return torch.where((num == 0) & (den == 0), torch.zeros_like(out), out)


class PreconditionerDecay:
    """ρ per tensor/group/global and the ‖√v‖ decay rate; keeps only per-group scalars as state.

    `include_current_grad=True` (default) is for a pre-step hook (state at t−1, `.grad` = g_t):
    v_t is folded in from Σv_{t−1} and Σg², as the coming step will. `False` is for a post-step
    hook, where the stored state already includes g_t.
    """

    def __init__(self, include_current_grad: bool = True) -> None:
        self.include_current_grad = include_current_grad
        self._prev: dict[int, tuple[int, Tensor, float]] = {}  # group -> (t, Σv_raw, β2)

    def update(
        self, source: object, names: Mapping[Tensor, str] | None = None
    ) -> RhoResult:
        """Measure from an Adam/AdamW optimizer (or a list of `adam_view` views)."""
        views = source if isinstance(source, list) else adam_view(source, names)
        live = [v for v in views if v.grad is not None and self._has_state(v)]
        if not live:
            raise ValueError("no parameter has both a gradient and Adam state to measure")
        device = live[0].param.device
        by_group: dict[int, list[ParamView]] = {}
        for v in live:
            by_group.setdefault(v.group_index, []).append(v)
        g2_parts: list[Tensor] = []
        v_parts: list[Tensor] = []
        raw_parts: list[Tensor] = []  # Σ raw EMA v per group (for the decay rate)
        steps: dict[int, int] = {}
        for gi, group in by_group.items():
            g2, vh, raw, t = self._group_sums(group)
            g2_parts.append(g2.to(device))
            v_parts.append(vh.to(device))
            raw_parts.append(raw.to(device))
            steps[gi] = t
        t_g2 = torch.cat(g2_parts)
        t_v = torch.cat(v_parts)
        group_g2 = torch.stack([p.sum() for p in g2_parts])
        group_v = torch.stack([p.sum() for p in v_parts])
        group_raw = torch.stack([p.sum() for p in raw_parts])
        group_decay, decay = self._decay(list(by_group), group_raw, steps, by_group, device)
        sum_g2, sum_v = group_g2.sum(), group_v.sum()
        return RhoResult(
            names=tuple(v.name for group in by_group.values() for v in group),
            tensor_sum_g2=t_g2,
            tensor_sum_v=t_v,
            tensor_rho=_ratio(t_g2, t_v),
            groups=tuple(by_group),
            group_sum_g2=group_g2,
            group_sum_v=group_v,
            group_rho=_ratio(group_g2, group_v),
            group_decay=group_decay,
            sum_g2=sum_g2,
            sum_v=sum_v,
            rho=_ratio(sum_g2, sum_v),
            sqrt_v_norm=sum_v.sqrt(),
            decay=decay,
            step=max(steps.values()),
        )

    def _has_state(self, v: ParamView) -> bool:
        return self.include_current_grad or v.exp_avg_sq is not None

    def _group_sums(self, group: list[ParamView]) -> tuple[Tensor, Tensor, Tensor, int]:
        """Per-tensor Σg², Σv̂ and Σ(raw EMA v) of one group, and its step t."""
        h = group[0].hyper
        cur = self.include_current_grad
        t = max(v.step for v in group) + (1 if cur else 0)
        coupled = h.weight_decay != 0.0 and not h.decoupled_wd
        grads = [effective_grad(v) if coupled else v.grad for v in group]
        g2 = torch.stack(norms_f32(grads, 2)).square()  # type: ignore[arg-type]
        emas = [v.exp_avg_sq_ema if v.exp_avg_sq_ema is not None else v.exp_avg_sq for v in group]
        raw = self._sum_v(emas, g2.device)
        if cur:
            raw = h.beta2 * raw + (1.0 - h.beta2) * g2
        if h.amsgrad:
            vhat = torch.stack(
                [bias_corrected_v(v, include_current_grad=cur).sum() for v in group]
            )
        else:
            vhat = raw / (1.0 - h.beta2**t)
        return g2, vhat, raw, t

    @staticmethod
    def _sum_v(vs: Sequence[Tensor | None], device: torch.device) -> Tensor:
        present = [v for v in vs if v is not None]
        sums = iter(norms_f32(present, 1) if present else [])
        zero = torch.zeros((), device=device)
        return torch.stack([next(sums) if v is not None else zero for v in vs])

    def _decay(
        self,
        order: list[int],
        group_raw: Tensor,
        steps: dict[int, int],
        by_group: dict[int, list[ParamView]],
        device: torch.device,
    ) -> tuple[Tensor, Tensor]:
        nan = torch.full((), math.nan, device=device)
        rates: list[Tensor] = []
        num: list[Tensor] = []
        den: list[Tensor] = []
        dts: set[int] = set()
        for i, gi in enumerate(order):
            beta2 = by_group[gi][0].hyper.beta2
            prev = self._prev.get(gi)
            cur_raw = group_raw[i]
            self._prev[gi] = (steps[gi], cur_raw.detach(), beta2)
            if prev is None or steps[gi] <= prev[0]:
                rates.append(nan)
                continue
            dt = steps[gi] - prev[0]
            dts.add(dt)
            rates.append((cur_raw / prev[1]) ** (1.0 / (2 * dt)) / math.sqrt(beta2))
            num.append(cur_raw)
            den.append(prev[1] * beta2**dt)
        group_decay = torch.stack(rates)
        if not num or len(num) != len(order) or len(dts) != 1:
            return group_decay, nan  # a global rate needs every group measured over the same Δ
        dt = dts.pop()
        return group_decay, (torch.stack(num).sum() / torch.stack(den).sum()) ** (1.0 / (2 * dt))
