"""The predictive probe: the two-secant curvature along the gradient and ρ, every step.

Adapter from :class:`monitor.two_secant.TwoSecant` to the agent: called from the optimizer's
post-step hook, it records the sampled parameters and optimizer state of every step and hands the
readings (each of a gradient from two steps before the step that completes it) to the collector.

Readings are computed in batches of `BATCH` steps while the last one is below `EAGER_RATIO`, and
at every step above it. The record cannot wait (the next step overwrites what it reads), the
arithmetic can: run back to back, all but the first step of a batch find the interpreter's and
the CPU's caches warm, and a batch of four costs about what two single steps cost (after a
training step everything is cold; in situ on the CPU benchmark model the arithmetic is ~170 µs
cold, ~45 µs warm). A page needs readings ≥ 0.99; from below 0.9 that is a rise of 10 % within
the four readings of a batch, and Adam's preconditioner decays by at most 1/√β2 a step (0.05 %
at β2 = 0.999, 2.6 % at 0.95), so a batch delays readings that are not near a page; from 0.9 on,
every reading is computed at its step. So from ρ ≥ `EAGER_RHO` (2) on: the gradient has outgrown
Adam's second moment, a runaway may be building, and the guard's catch-up of v must not wait up
to three steps for a batch (on the suite's β2 = 0.999 transformers, waiting took their final loss
from 0.058 and 0.032 to 0.087 and 0.050; ρ ≥ 2 on at most 4 % of a stable control's readings). (A
hyper-parameter change that jumps the ratio is read at its pre-step hook from the last reading,
not from this one.)
A drain due at this step flushes first, so that every record sent holds its readings.

When the scheduler stretches it (only if it alone exceeds the overhead budget), it asks to be
called at the steps after a due step (`follow`) until it has the four consecutive steps a reading
needs. A reading within 2 % of the edge of stability flags the step (`Ctx.near_edge`) so that the
monitor sends it at once rather than at the next drain: a page's lead is tens of steps, a drain's
wait up to 25.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spikewatch.agent._collect import Collector
from spikewatch.agent._host_mirror import HostMirror
from spikewatch.agent._probe_base import Ctx, Probe
from spikewatch.agent._profiles import TWO_SECANT
from spikewatch.monitor.two_secant import TwoSecantReading
from spikewatch.protocol import names as nm
from spikewatch.protocol.names import Combine

BATCH = 4  # steps recorded per batch of readings below the edge
EAGER_RATIO = 0.9  # from this ratio on, a reading at every step
EAGER_RHO = 2.0  # and from this ρ on (‖g‖ twice ‖√v̂‖: the guard's catch-up may be due)
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
        self.reading: tuple[int, list[float]] | None = None  # (step, host values): the last
        self.fresh: tuple[int, list[tuple[int, list[float]]]] = (-1, [])  # (hook step, readings
        # made there), for the guard

    def v_changed(self) -> None:
        """Adam's v was changed outside the optimizer (the guard's lift): read it afresh."""
        self.est.resync_v()

    def post(self, step: int, out: Collector) -> None:
        est = self.est
        est.record(step + 1)  # `step` is the index of the step that just completed
        self.fresh = (step, [])
        if est.pending < BATCH and not self.ctx.drain_due and not self._eager():
            self.follow = step + 1  # the batch is not complete: come back at the next step
            return
        self.follow = None if self.settle(out) else step + 1

    def settle(self, out: Collector) -> int:
        """Compute and hand over the readings of the steps recorded so far (also at close);
        how many there were."""
        readings = self.est.flush()
        for r in readings:
            self._emit(r, out)
        return len(readings)

    def _eager(self) -> bool:
        """Whether the last reading was near enough to the edge, or its gradient far enough past
        Adam's second moment (a runaway building), to compute at every step."""
        if self.reading is None:
            return False
        values = self.reading[1]  # [λ, ratio, ρ, secant ratio]; SGD's ρ is NaN
        return values[1] >= EAGER_RATIO or values[2] >= EAGER_RHO

    def _emit(self, r: TwoSecantReading, out: Collector) -> None:
        self.last = r
        host = r.host()
        values = host[0] if host is not None else self.mirror.update(r.values)
        if values is not None:  # [λ, ratio, ρ, secant ratio] on the host
            self.reading = (r.step, values)
            self.fresh[1].append(self.reading)
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
