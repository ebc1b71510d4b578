"""What the agent adds to drained records on the host: reactive loss-spike and non-finite
detection, the five-phase label and the rise of the run's last instability (the monitor
library's detectors, fed the drained floats in step order)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from spikewatch.protocol import names as nm
from spikewatch.protocol import wire
from spikewatch.protocol.names import EventType

__all__ = ["Reactive", "record_ratio"]


class Reactive:
    """Reactive loss-spike / non-finite detection, the phase label and the last instability's
    loss rise, on drained records."""

    def __init__(self) -> None:
        from spikewatch.monitor.instability import InstabilityTracker
        from spikewatch.monitor.reactive import ReactiveDetector

        self.loss = ReactiveDetector("olmo_core")
        self.grad = ReactiveDetector("olmo_core")
        self.phases: Any = None
        self.instability = InstabilityTracker()

    def observe(self, records: list[wire.Record], beta2: float) -> list[wire.Record]:
        from spikewatch.monitor.reactive import Kind

        out = []
        for i, r in enumerate(records):
            events: list[wire.Event] = []
            scalars = dict(r.scalars)
            before = self.instability.rise
            rise = self.instability.update(r.step, r.scalars.get(nm.LOSS), record_ratio(r.scalars))
            if rise != before or i == len(records) - 1:
                scalars[nm.INSTABILITY_RISE] = rise
            for series, det in ((nm.LOSS, self.loss), (nm.GRAD_NORM, self.grad)):
                v = r.scalars.get(series)
                if v is None:
                    continue
                d = det.update(r.step, v)
                if d is None:
                    continue
                if d.kind == Kind.NONFINITE:
                    events.append(wire.Event(EventType.NONFINITE.value,
                                             {"series": series, "value": d.value}))
                elif series == nm.LOSS:
                    events.append(wire.Event(EventType.LOSS_SPIKE.value,
                                             {"rule": d.rule, "value": d.value,
                                              "threshold": d.threshold}))
            rho, decay = r.scalars.get(nm.RHO), r.scalars.get(nm.SQRT_V_DECAY)
            if rho is not None and decay is not None and math.isfinite(rho):
                ratio = record_ratio(r.scalars)
                if self.phases is None:
                    from spikewatch.monitor.phases import PhaseLabeller

                    self.phases = PhaseLabeller(beta2)
                u = self.phases.update(rho, decay if math.isfinite(decay) else 1.0, ratio)
                scalars[nm.PHASE] = float(int(u.phase))
                if u.changed:
                    events.append(wire.Event(EventType.PHASE_CHANGE.value,
                                             {"phase": int(u.phase), "previous": int(u.previous)}))
            if events or scalars != r.scalars:
                r = dataclasses.replace(r, scalars=scalars, events=(*r.events, *events))
            out.append(r)
        return out


def record_ratio(scalars: Mapping[str, float]) -> float | None:
    """The record's stability ratio: the exact one where measured, else the two-secant's, else
    the plain secant's."""
    for name in (nm.STABILITY_RATIO, nm.STABILITY_RATIO_TWO_SECANT, nm.STABILITY_RATIO_SECANT):
        v = scalars.get(name)
        if v is not None:
            return v
    return None
