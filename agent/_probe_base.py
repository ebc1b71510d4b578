"""What every probe shares: the context it reads (`Ctx`), the `Probe` base and small helpers.

A probe runs in the optimizer pre-step hook (`pre`: θ_t, ``.grad`` = g_t, state at t−1) or in the
post-step hook (`post`: state at t). It only launches device work and hands 0-d tensors to the
collector; it never reads them back. `follow` asks the monitor to call the probe at one more step
regardless of its cadence, in the phase `follow_phase` (a stretched two-secant needs the
post-steps of the three steps after it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from spikewatch.agent._collect import Collector
from spikewatch.agent._distributed import World
from spikewatch.agent._ramp import HparamChange
from spikewatch.monitor._reduce import norms_f32
from spikewatch.protocol import wire
from spikewatch.protocol.names import EventType

Closure = Callable[[], Tensor]
MAX_SA_LAYERS = 32  # layers the alignment probe watches at most


@dataclass(slots=True)
class Ctx:
    """What every probe may read: the model, the optimizer holding this rank's state, names.

    Views of the Adam state and the Hessian-vector-product backend are built at most once per
    hook and shared by the probes of that hook (`clear()` drops them, freeing any graph).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    names: dict[Tensor, str]
    world: World
    closure: Closure | None
    curvature: str  # resolved backend: "exact", "fd" or "secant"
    auto: bool = False  # curvature="auto": fall back from exact to finite differences
    last_ratio: float | None = None  # last drained stability ratio (for hyperparameter events)
    predictor: Any = None  # the two-secant probe, whose last reading is the freshest ratio
    urgent: bool = False  # something a person must see now: drain at the end of this step
    near_edge: bool = False  # the predictor read a ratio near the edge at this step
    drain_due: bool = False  # the monitor drains at the end of this step
    changes: list[HparamChange] = field(default_factory=list)  # lr/β1 changes at this pre-step
    _views: tuple[tuple[int, str], list[Any]] | None = None
    _hvp: tuple[int, Any] | None = None

    def params(self) -> list[Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def grads(self) -> list[Tensor]:
        return [p.grad for p in self.params() if p.grad is not None]

    def views(self, step: int, phase: str) -> list[Any]:
        """Adam views of the parameters with a gradient, cached for this step and hook."""
        if self._views is None or self._views[0] != (step, phase):
            from spikewatch.monitor.adam_state import adam_view

            live = [v for v in adam_view(self.optimizer, self.names) if v.grad is not None]
            if not live:
                raise ValueError("no parameter has a gradient at the optimizer step")
            self._views = ((step, phase), live)
        return self._views[1]

    def hvp(self, step: int) -> Any:
        """The Hessian-vector-product backend on the current batch (needs the closure)."""
        if self._hvp is not None and self._hvp[0] == step:
            if isinstance(self._hvp[1], BaseException):
                raise self._hvp[1]  # one failed closure call serves every probe of this step
            return self._hvp[1]
        try:
            backend = self._build_hvp(step)
        except Exception as e:
            self._hvp = (step, e)
            raise
        self._hvp = (step, backend)
        return backend

    def _build_hvp(self, step: int) -> Any:
        if self.closure is None:
            raise ValueError("curvature probes need attach(closure=...)")
        from spikewatch.monitor.hvp import ExactHVP, FiniteDifferenceHVP

        params = [v.param for v in self.views(step, "pre")]
        backend: Any
        if self.curvature == "fd":
            backend = FiniteDifferenceHVP(self.closure, params)
        else:
            saved = [p.grad for p in params]
            try:
                with torch.enable_grad():
                    loss = self.closure()
                if not isinstance(loss, Tensor) or loss.numel() != 1:
                    raise ValueError("the closure must return the scalar loss tensor")
                backend = ExactHVP(loss.reshape(()), params)
            finally:
                for p, g in zip(params, saved, strict=True):
                    p.grad = g  # a closure that called backward() must not change training
        return backend

    def latest_ratio(self) -> float | None:
        """The freshest stability ratio: the predictor's last reading (read on the host: call
        only at a rare event, e.g. a hyper-parameter change), else the last drained one."""
        last = getattr(self.predictor, "last", None)
        if last is not None:
            return float(last.stability_ratio)
        return self.last_ratio

    def clear(self) -> None:
        self._views = None
        self._hvp = None
        if self.changes:
            self.changes = []

    def with_hvp(self, step: int, out: Collector, measure: Callable[[Any], None]) -> None:
        """Run `measure(hvp)`; under curvature="auto", an exact HVP that the model's ops cannot
        double-differentiate (e.g. fused attention kernels) switches to finite differences."""
        hvp = self.hvp(step)  # a failing closure is the closure's error: no fallback
        try:
            measure(hvp)
        except RuntimeError as e:
            if not (self.auto and self.curvature == "exact"):
                raise
            self.curvature = "fd"
            self._hvp = None
            out.event(step, wire.Event(EventType.PROBE_ERROR.value, {
                "probe": "curvature", "error": type(e).__name__, "message": str(e)[:300],
                "disabled": False, "switched_to": "fd"}))
            measure(self.hvp(step))


class Probe:
    """Base: a named measurement with optional pre-step and post-step parts."""

    name: str = ""
    follow: int | None = None  # a step beyond its cadence at which the probe asks to run again
    follow_phase: str = "pre"  # which part runs at that step

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        # which parts the probe has: a part it does not override is not even called
        self.has_pre = type(self).pre is not Probe.pre
        self.has_post = type(self).post is not Probe.post

    def pre(self, step: int, out: Collector) -> None:
        """Work at the pre-step moment of a due step."""

    def post(self, step: int, out: Collector) -> None:
        """Work at the post-step moment of a due step."""


_BAD_LAYER_CHARS = re.compile(r"[^A-Za-z0-9_.:/\-\[\]]")


def layer_name(name: str, fallback: str = "model") -> str:
    """A module/parameter name as the wire accepts it (`wire.LAYER_RE`): the root module, which
    has the empty name, becomes `fallback`; torch.compile's `_orig_mod.` wrappers are left out;
    other characters become "_"; at most 128 long."""
    if "_orig_mod" in name:
        name = ".".join(part for part in name.split(".") if part != "_orig_mod")
    n = _BAD_LAYER_CHARS.sub("_", name) or fallback
    if not re.match(r"[A-Za-z0-9_]", n[0]):
        n = "_" + n
    return n[:128]


def _sum_on(tensors: Sequence[Tensor]) -> Tensor:
    """Sum of 0-d tensors that may live on several devices, on the first one (no host sync)."""
    dev = tensors[0].device
    return torch.stack([t.to(dev, non_blocking=True) for t in tensors]).sum()


def sum_of_squares(tensors: Sequence[Tensor]) -> Tensor:
    """Σ x² over tensors in float32, with one fused foreach reduction per device and dtype."""
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t.detach())
    parts = []
    for ts in groups.values():
        # fp16/bf16 accumulate in float32 (an fp16 norm overflows past 65504), float64 in float64
        parts.append(torch.stack(norms_f32(ts)).square().sum())
    return _sum_on(parts)


def curvature_backend(curvature: str, closure: Closure | None) -> str:
    """The curvature backend a setting resolves to: "auto" is exact with a closure, else the
    zero-extra-pass secant; "exact" and "fd" need the closure (refused here, before training)."""
    if curvature == "auto":
        return "exact" if closure is not None else "secant"
    if curvature in ("exact", "fd") and closure is None:
        raise ValueError(f"curvature={curvature!r} needs closure= (a callable re-evaluating the "
                         "loss on the current batch); without one use 'secant' or 'auto'")
    return curvature
