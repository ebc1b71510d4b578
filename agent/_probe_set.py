"""Which probes a monitor builds for its optimizer, profile and model.

Every optimizer gets the hyper-parameter watch, ‖g‖ and the spike share; Adam/AdamW and plain SGD
get the predictor (the two-secant curvature and ρ); Adam gets the preconditioner probe and, with
a closure (curvature "exact"/"fd", unsharded), λ_grad and λ_max; the forward-hook probes (spectral
alignment, over-confidence) are armed on the selected layers and the output module. A probe whose
cadence in the profile is 0 is not built; one that fails to build is reported and left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from spikewatch.agent import _probes as pr
from spikewatch.agent._forward_probes import AlignmentProbe, Armed, HookEnv, LogitsProbe
from spikewatch.agent._layers import select_layers
from spikewatch.agent._probe_base import Ctx, Probe
from spikewatch.agent._profiles import (
    ALIGNMENT,
    CURVATURE,
    HPARAMS,
    LAMBDA_MAX,
    LOGITS,
    PRECOND,
    TWO_SECANT,
)
from spikewatch.agent._scheduler import Scheduler
from spikewatch.agent._two_secant_probe import TwoSecantProbe
from spikewatch.protocol.names import EventType

Fail = Callable[[str, BaseException], None]
Event = Callable[..., None]


@dataclass(slots=True)
class ProbeSet:
    """The built probes: those the hooks run on their cadence, the every-step hyper-parameter
    watch (run inline with the hooks), and the forward-hook probes."""

    probes: list[Probe] = field(default_factory=list)
    hparams: pr.HparamsProbe | None = None
    armed: list[Armed] = field(default_factory=list)


def build_probes(ctx: Ctx, scheduler: Scheduler, *, sample_fraction: float | None, env: HookEnv,
                 layers: Iterable[str | nn.Module] | None, logits_module: nn.Module | None,
                 fail: Fail, event: Event) -> ProbeSet:
    """Build the probes; `fail(name, error)` reports one that cannot be built, `event(kind,
    **data)` streams an event (the Adam-state signals are off for another optimizer)."""
    out = ProbeSet()
    adam = isinstance(ctx.optimizer, torch.optim.Adam)
    kinds: list[type[Probe]] = [pr.HparamsProbe, pr.GradNormProbe, pr.SpikeShareProbe]
    if adam or isinstance(ctx.optimizer, torch.optim.SGD):
        kinds += [TwoSecantProbe]  # refuses Nesterov SGD with a reported error
    if adam:
        kinds += [pr.PrecondProbe]
        if not ctx.world.sharded and ctx.curvature in ("exact", "fd"):
            kinds += [pr.CurvatureProbe, pr.LambdaMaxProbe]
    else:
        event(EventType.PROBE_ERROR, probe="precond", error="UnsupportedOptimizer",
              message=f"{type(ctx.optimizer).__name__}: Adam-state signals are off")
    for kind in kinds:
        if scheduler.cadence(kind.name) == 0:
            continue
        try:
            probe = (TwoSecantProbe(ctx, sample_fraction) if kind is TwoSecantProbe
                     else kind(ctx))
        except Exception as e:
            fail(kind.name, e)
            continue
        if isinstance(probe, TwoSecantProbe):
            ctx.predictor = probe
        if isinstance(probe, pr.HparamsProbe) and scheduler.cadence(HPARAMS) == 1:
            out.hparams = probe  # every step: called inline, timed with the hooks
        else:
            out.probes.append(probe)
    for name in (CURVATURE, LAMBDA_MAX, PRECOND, TWO_SECANT):
        if not any(p.name == name for p in out.probes):
            scheduler.disable(name)
    if scheduler.cadence(ALIGNMENT) > 0:
        try:
            selected = select_layers(ctx.model, layers)
            if selected:
                out.armed.append(AlignmentProbe(selected, env))
        except Exception as e:
            fail(ALIGNMENT, e)
    if logits_module is not None and scheduler.cadence(LOGITS) > 0:
        out.armed.append(LogitsProbe(logits_module, env))
    return out
