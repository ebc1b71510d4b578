"""The gradient- and state-reading probes: adapters from the signal library (`monitor/`) to the
agent's hooks and collector (the base they share is `agent._probe_base`; forward-hook probes live
in `agent._forward_probes`, the predictor in `agent._two_secant_probe`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spikewatch.agent._collect import Collector
from spikewatch.agent._probe_base import Ctx, Probe, sum_of_squares
from spikewatch.agent._profiles import (
    CURVATURE,
    GRAD_NORM,
    HPARAMS,
    LAMBDA_MAX,
    PRECOND,
    SPIKE_SHARE,
)
from spikewatch.agent._ramp import HparamChange
from spikewatch.monitor.hparams import GROUP_KEYS, HparamWatch, raw_groups
from spikewatch.protocol import names as nm
from spikewatch.protocol import wire
from spikewatch.protocol.names import Combine

MAX_SPIKE_LAYERS = 32
MAX_RHO_TENSORS = 256
LAMBDA_MAX_ITERS = 8


class GradNormProbe(Probe):
    """‖g‖ over the parameters this rank's optimizer updates (a partial Σg² when sharded)."""

    name = GRAD_NORM

    def pre(self, step: int, out: Collector) -> None:
        grads = self.ctx.grads()
        if not grads:
            return
        sq = sum_of_squares(grads)
        w = self.ctx.world
        if w.sharded:
            out.partial(step, nm.GRAD_NORM, Combine.SQRT_RATIO, sq, 1.0 / w.world_size)
        else:
            out.scalar(step, nm.GRAD_NORM, sq.sqrt())


def _spread(items: list[Any], cap: int) -> list[Any]:
    """At most `cap` items, evenly spread over the list (first and last kept)."""
    if len(items) <= cap:
        return items
    return [items[i * (len(items) - 1) // (cap - 1)] for i in range(cap)]


class SpikeShareProbe(Probe):
    """Spike energy share of 2-D gradients: per layer, and the max over layers."""

    name = SPIKE_SHARE

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        from spikewatch.monitor.spike_share import SpikeShare

        self.tracker = SpikeShare()
        mats = [p for p in ctx.params() if p.ndim == 2 and min(p.shape) >= 2]
        self.params = _spread(mats, MAX_SPIKE_LAYERS)

    def pre(self, step: int, out: Collector) -> None:
        shares = []
        for p in self.params:
            if p.grad is None:
                continue
            name = self.ctx.names.get(p, "param")
            r = self.tracker.update(name, p.grad)
            out.layer(step, nm.GRAD_SPIKE_SHARE, name, r.share)
            shares.append(r.share)
        if shares:
            top = torch.stack([s.to(shares[0].device) for s in shares]).max()
            if self.ctx.world.sharded:
                out.partial(step, nm.GRAD_SPIKE_SHARE, Combine.MAX, top)
            else:
                out.scalar(step, nm.GRAD_SPIKE_SHARE, top)


class HparamsProbe(Probe):
    """lr/β1/β2 of group 0 every step, and discontinuity events (momentum jumps included)."""

    name = HPARAMS

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        opt = ctx.optimizer
        # one (the smallest) momentum buffer tells a rescale: for Adam its version counter, no
        # kernel; for SGD one tiny norm per step
        self.watch = (HparamWatch(sample_tensors=1, adam_buffer_norms=False)
                      if isinstance(opt, torch.optim.Adam | torch.optim.SGD) else None)
        self._seen: tuple[Any, ...] | None = None  # signature at the last pre-step
        self._raw: list[tuple[Any, ...]] | None = None  # the same, as read (plain numbers only)
        self._quiet = 0  # consecutive steps with unchanged hyperparameters
        self._host: tuple[tuple[Any, ...], dict[str, float]] | None = None  # signature, scalars
        self._stamped: tuple[Any, ...] | None = None  # signature at the watch's last record
        # (signature before, the groups' lr) where only the lr moved at this step (a schedule)
        self._lr_step: tuple[tuple[Any, ...], list[float]] | None = None

    def _signature(self) -> tuple[Any, ...] | None:
        """The groups' hyperparameters as plain numbers; None if any is a tensor (always check)."""
        sig: list[Any] = []
        for g in self.ctx.optimizer.param_groups:
            for k in GROUP_KEYS:
                v = g.get(k)
                if isinstance(v, Tensor) or (isinstance(v, tuple | list)
                                             and any(isinstance(x, Tensor) for x in v)):
                    return None
                sig.append(tuple(v) if isinstance(v, list) else v)
        return tuple(sig)

    def pre(self, step: int, out: Collector) -> None:
        raw = raw_groups(self.ctx.optimizer.param_groups)
        last = self._raw
        if self._seen is not None and raw == last:
            self._quiet += 1  # the same plain numbers as at the last step (cheap path)
            lrs = self._lr_step = None
        else:
            seen = self._seen
            lrs = None if seen is None else _lr_only(raw, last)
            if seen is not None and lrs is not None:  # an lr schedule: only the lr moved
                self._lr_step = (seen, lrs)
                sig: tuple[Any, ...] | None = _with_lrs(seen, lrs)
                self._quiet = 0
            else:
                self._lr_step = None
                sig = self._signature()
                self._quiet = self._quiet + 1 if sig is not None and sig == self._seen else 0
            self._seen = sig
            self._raw = raw if sig is not None else None
        if self.watch is None or self._quiet >= 2:
            return  # unchanged at this step and the last: the watch would see Δ = 0 twice
        if lrs is not None and self.watch.lr_moved_smoothly(lrs):
            return  # a schedule's step: the watch has noted it, no event is possible
        for e in self.watch.before_step(self.ctx.optimizer, step, self.ctx.latest_ratio):
            out.event(step, wire.Event(e.type.value, {k: _wire_scalar(v)
                                                       for k, v in e.data.items()}))
            if e.data.get("unstable_after"):
                self.ctx.urgent = True  # the page is due before the changed step's spike
            change = _threshold_change(e.data)
            if change is not None:
                self.ctx.changes.append(change)  # for the guard's ramp, in this pre-step hook

    def post(self, step: int, out: Collector) -> None:
        """lr and betas of group 0; with plain-number hyperparameters unchanged since the last
        step, the same host numbers are reused and the watch only re-stamps the buffers."""
        sig, host, lr_step = self._seen, self._host, self._lr_step
        if sig is not None and host is not None and host[0] == sig:
            out.host_scalars(step, host[1])
        elif sig is not None and host is not None and lr_step and host[0] == lr_step[0]:
            values = {**host[1], nm.LR: float(lr_step[1][0])}  # a schedule's step: the lr moved
            out.host_scalars(step, values)
            self._host = (sig, values)
        else:
            g = self.ctx.optimizer.param_groups[0]
            values = {nm.LR: g["lr"]}
            betas = g.get("betas")
            if isinstance(betas, tuple | list) and len(betas) == 2:
                values[nm.BETA1], values[nm.BETA2] = betas
            elif "momentum" in g:
                values[nm.BETA1] = g["momentum"]
            for k, v in values.items():
                out.scalar(step, k, _maybe_tensor(v))
            self._host = (sig, {k: float(v) for k, v in values.items()}) if sig else None
        if self.watch is None:
            return
        if sig is not None:  # plain numbers: re-read as such where they moved; buffers re-stamped
            lrs = lr_step[1] if lr_step and self._stamped == lr_step[0] else None
            self.watch.restamp(self.ctx.optimizer, reread=sig != self._stamped, lrs=lrs)
        else:
            self.watch.after_step(self.ctx.optimizer)
        self._stamped = sig


def _lr_only(raw: list[tuple[Any, ...]], last: list[tuple[Any, ...]] | None
             ) -> list[float] | None:
    """The groups' lr where it is all that moved since `last` (an lr schedule), else None."""
    if last is None or len(last) != len(raw) or any(
            r[1:] != q[1:] for r, q in zip(raw, last, strict=True)):
        return None
    lrs = [r[0] for r in raw]
    return lrs if all(isinstance(x, float | int) for x in lrs) else None


def _with_lrs(sig: tuple[Any, ...], lrs: list[float]) -> tuple[Any, ...]:
    """A signature (`GROUP_KEYS` per group, lr first) with the groups' lr replaced."""
    out = list(sig)
    for gi, lr in enumerate(lrs):
        out[gi * len(GROUP_KEYS)] = lr
    return tuple(out)


def _threshold_change(data: dict[str, Any]) -> HparamChange | None:
    """An lr/β1 change event as the guard's ramp reads it (None for other events)."""
    name, factor = data.get("hparam"), data.get("ratio_factor")
    if name not in ("lr", "beta1") or not isinstance(factor, float):
        return None
    after = data.get("stability_ratio_after")
    return HparamChange(int(data["group"]), str(name), float(data["old"]), float(data["new"]),
                        factor, after if isinstance(after, float) else None)


def _maybe_tensor(v: Any) -> Tensor | float:
    return v if isinstance(v, Tensor) else float(v)


def _wire_scalar(v: Any) -> wire.Scalar:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return float(v)


class PrecondProbe(Probe):
    """ρ = ‖g‖/‖√v̂‖ global, per group and per tensor; ‖√v̂‖ and its decay rate."""

    name = PRECOND

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        from spikewatch.monitor.precond_decay import PreconditionerDecay

        self.pd = PreconditionerDecay(include_current_grad=True)

    def pre(self, step: int, out: Collector) -> None:
        r = self.pd.update(self.ctx.views(step, "pre"))
        w = self.ctx.world
        if w.sharded:
            out.partial(step, nm.RHO, Combine.SQRT_RATIO, r.sum_g2, r.sum_v)
            out.partial(step, nm.SQRT_V_NORM, Combine.SQRT_RATIO, r.sum_v, 1.0 / w.world_size)
        else:
            out.scalar(step, nm.RHO, r.rho)
            out.scalar(step, nm.SQRT_V_NORM, r.sqrt_v_norm)
            out.scalar(step, nm.SQRT_V_DECAY, r.decay)
        groups = [f"group:{g}" for g in r.groups]
        idx = _spread(list(range(len(r.names))), MAX_RHO_TENSORS)
        tensor_rho = r.tensor_rho if len(idx) == len(r.names) else r.tensor_rho[
            torch.tensor(idx, device=r.tensor_rho.device)]
        out.layer_vector(step, nm.RHO, groups + [r.names[i] for i in idx],
                         torch.cat((r.group_rho, tensor_rho)))
        if not w.sharded:
            out.layer_vector(step, nm.SQRT_V_DECAY, groups, r.group_decay)


class CurvatureProbe(Probe):
    """λ_grad = gᵀĤg/‖g‖² and r = η·λ_grad/2 from one HVP on the current batch (closure)."""

    name = CURVATURE

    def pre(self, step: int, out: Collector) -> None:
        from spikewatch.monitor.curvature import gradient_curvature

        def measure(hvp: Any) -> None:
            gc = gradient_curvature(self.ctx.views(step, "pre"), hvp)
            out.scalar(step, nm.LAMBDA_GRAD, gc.lambda_grad)
            out.scalar(step, nm.STABILITY_RATIO, gc.stability_ratio)

        self.ctx.with_hvp(step, out, measure)


class LambdaMaxProbe(Probe):
    """λ_max(Ĥ) by warm-started power iteration (fixed iterations: no host sync)."""

    name = LAMBDA_MAX

    def __init__(self, ctx: Ctx) -> None:
        super().__init__(ctx)
        from spikewatch.monitor.curvature import TopEigen

        self.top = TopEigen(max_iters=LAMBDA_MAX_ITERS, tol=None)

    def pre(self, step: int, out: Collector) -> None:
        def measure(hvp: Any) -> None:
            tc = self.top(self.ctx.views(step, "pre"), hvp)
            out.scalar(step, nm.LAMBDA_MAX, tc.lambda_max)
            out.scalar(step, nm.STABILITY_RATIO_MAX, tc.stability_ratio)
            out.scalar(step, nm.GRAD_TOP_EIG_COS, tc.grad_cos)

        self.ctx.with_hvp(step, out, measure)
