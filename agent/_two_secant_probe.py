"""The predictive probe: the two-secant curvature along the gradient and ρ, every step.

Adapter from :class:`monitor.two_secant.TwoSecant` to the agent: called from the optimizer's
post-step hook, it reads the sampled parameters and optimizer state and hands the reading of the
gradient before last (known once the last step's gradient is) to the collector. When the scheduler
stretches it (only if it alone exceeds the overhead budget), it asks to be called at the steps
after a due step (`follow`) until it has the four consecutive steps a reading needs. A reading
within 2 % of the edge of stability flags the step (`Ctx.near_edge`) so that the monitor sends it
at once rather than at the next drain: a page's lead is tens of steps, a drain's wait up to 25.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spikewatch.agent._collect import Collector
from spikewatch.agent._host_mirror import HostMirror
from spikewatch.agent._probe_base import Ctx, Probe
from spikewatch.agent._profiles import TWO_SECANT
from spikewatch.protocol import names as nm
from spikewatch.protocol.names import Combine

URGENT_RATIO = 0.98  # a reading this close to the edge is sent at once (see Monitor._urgent)


class TwoSecantProbe(Probe):
    """λ_two_secant, its stability ratio, the sampled ρ and the plain secant's ratio of the
    gradient before last."""

    name = TWO_SECANT
    follow_phase = "post"
    burst = 4  # consecutive steps a reading needs (the scheduler's cost model)

    def __init__(self, ctx: Ctx, fraction: float | None = None) -> None:
        super().__init__(ctx)
        from spikewatch.monitor.two_secant import TwoSecant

        self.est = TwoSecant(ctx.optimizer, fraction=fraction)
        self.last: Any = None  # the last reading (device tensors), for hyperparameter events
        self.mirror = HostMirror()  # its values on the host, when they are there to read
        self.reading: tuple[int, list[float]] | None = None  # (step, host values), for the guard

    def v_changed(self) -> None:
        """Adam's v was changed outside the optimizer (the guard's lift): read it afresh."""
        self.est.resync_v()

    def post(self, step: int, out: Collector) -> None:
        r = self.est.update(step + 1)  # `step` is the index of the step that just completed
        self.follow = step + 1 if r is None else None
        if r is None:
            return
        self.last = r
        host = r.host()
        values = host[0] if host is not None else self.mirror.update(r.values)
        if values is not None:  # [λ, ratio, ρ, secant ratio] on the host
            self.reading = (r.step, values)
            if values[1] >= URGENT_RATIO:
                self.ctx.near_edge = True
        keep = _ALL if self.est.kind == "adam" else _NO_RHO  # SGD keeps no second moment
        if self.ctx.world.sharded:
            num, den = (r.num, r.den) if host is None else (host[1], host[2])
            out.partial_vector(r.step, [_NAMES[i] for i in keep], [_COMBINE[i] for i in keep],
                               _pick(num, keep), _pick(den, keep))
        elif host is not None:  # floats already: no tensor operation at all
            out.host_scalars(r.step, {_NAMES[i]: host[0][i] for i in keep})
        else:
            out.scalar_vector(r.step, [_NAMES[i] for i in keep], r.values[keep])


def _pick(values: Any, keep: list[int]) -> Any:
    return values[keep] if isinstance(values, Tensor) else torch.tensor([values[i] for i in keep])


# the reading's values, in order
_NAMES = (nm.LAMBDA_TWO_SECANT, nm.STABILITY_RATIO_TWO_SECANT, nm.RHO_SAMPLED,
          nm.STABILITY_RATIO_SECANT)
_COMBINE = (Combine.RATIO, Combine.RATIO, Combine.SQRT_RATIO, Combine.RATIO)
_ALL = [0, 1, 2, 3]
_NO_RHO = [0, 1, 3]
