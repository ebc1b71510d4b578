"""The drain: from the collector's device buffers to records on the transport.

At a drain the pending steps are copied to the host in one transfer (`Collector.drain`), labelled
on the host with the signal library's detectors (`Reactive`: reactive loss-spike and non-finite
events, the five-phase label, the rise of the run's last instability and where the loss stands
against it, and the swings of a logged `eval_loss`, fed the drained floats in step order),
joined by the agent's own record (overhead, cadences, transport and guard counters, a
`prediction_degraded` event when the predictor's cadence changes) and handed to the transport,
which never blocks, then to the user's trackers
(`agent._trackers`: the same host floats, written again). The alerts the server told this run of
since the last drain (replies the transport's thread received) are logged, written to the
trackers and kept in `firing`.
`urgent` decides when a page may be due before the regular drain cadence.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spikewatch.agent._collect import Collector
from spikewatch.agent._guard_hooks import GuardHooks
from spikewatch.agent._probe_base import Ctx
from spikewatch.agent._profiles import TWO_SECANT
from spikewatch.agent._scheduler import Report, Scheduler
from spikewatch.agent._trackers import Trackers
from spikewatch.protocol import names as nm
from spikewatch.protocol import wire
from spikewatch.protocol.names import EventType

log = logging.getLogger("spikewatch.agent")
RECORDS_PER_SUBMIT = 64
URGENT_RISE = 1.2  # near the edge after an instability at least this large: send at once
URGENT_EVERY = 4  # steps between such urgent drains
_COUNTERS = ((nm.AGENT_QUEUED, "queued"), (nm.AGENT_SENT, "sent"), (nm.AGENT_ACKED, "acked"),
             (nm.AGENT_SPOOLED, "spooled"), (nm.AGENT_DROPPED, "dropped"))


@dataclass(slots=True)
class Drain:
    """Sends what one monitor collected; keeps what the sends need to remember."""

    out: Collector
    scheduler: Scheduler
    ctx: Ctx
    transport: Any
    reactive: Reactive
    guard: GuardHooks | None
    overhead_budget: float
    failed: set[str]  # the probes that reported a failure (the monitor's set)
    trackers: Trackers | None = None  # where the records are also written
    firing: dict[str, wire.Alert] = dataclasses.field(default_factory=dict)  # server's, by rule
    last_report: Report | None = None  # the scheduler's last overhead measurement
    _prediction_cadence: int | None = None  # as last reported
    _urgent_at: int = -URGENT_EVERY  # the step of the last urgent drain

    def drain(self, last_step: int, upto: int | None = None, *, window: bool = True) -> None:
        """Send what was collected up to step `upto` (all if None). A regular drain (`window`)
        also closes the overhead budget's window and adds the agent's own record; an urgent one
        only sends, so a burst of urgent sends does not cut the window into a few steps whose
        noise would stretch the predictor (their cost still counts in the window)."""
        records = self.out.drain(upto)
        report = self.scheduler.adjust() if window else None
        if report is not None:
            self.last_report = report
        records = self.reactive.observe(records, self._beta2())
        for r in records:
            ratio = record_ratio(r.scalars)
            if ratio is not None and math.isfinite(ratio):
                self.ctx.last_ratio = ratio
        if window:
            extra = self._agent_record(report, records[-1].step if records else last_step)
            if records and records[-1].step == extra.step:
                records[-1] = _merge(records[-1], extra)
            else:
                records.append(extra)
        for i in range(0, len(records), RECORDS_PER_SUBMIT):
            self.transport.submit(records[i:i + RECORDS_PER_SUBMIT])
        if self.trackers:
            self.trackers.write(records)
        self._alerts()

    def _alerts(self) -> None:
        """Take the server's alert replies: log them, keep `firing`, write them to trackers."""
        take = getattr(self.transport, "take_alerts", None)  # a user's transport may have none
        alerts: list[wire.Alert] = take() if take is not None else []
        for a in alerts:
            if a.state == "firing":
                self.firing[a.rule] = a
                log.log(logging.WARNING if a.severity == "page" else logging.INFO,
                        "spikewatch: %s %s firing on run %s at step %d: %s", a.severity, a.rule,
                        a.run, a.step, a.summary)
            else:
                self.firing.pop(a.rule, None)
                log.info("spikewatch: %s resolved on run %s at step %d", a.rule, a.run, a.step)
        if alerts and self.trackers:
            self.trackers.alerts(alerts)

    def urgent(self, step: int) -> str | None:
        """Why to send now, if so: "hparams", a hyper-parameter change past the edge (its event
        is at this step: all of it goes), or "edge", a ratio near the edge in a run whose last
        instability moved the loss (what the page waits for; the steps before this one go, this
        step's loss is still to come), at most every `URGENT_EVERY` steps while it lasts."""
        ctx = self.ctx
        urgent, near = ctx.urgent, ctx.near_edge
        ctx.urgent = ctx.near_edge = False
        if urgent:
            self._urgent_at = step
            return "hparams"
        if (near and self.reactive.instability.rise >= URGENT_RISE
                and step - self._urgent_at >= URGENT_EVERY):
            self._urgent_at = step
            return "edge"
        return None

    def _prediction_events(self, cadence: int) -> tuple[wire.Event, ...]:
        """An event when the predictor's cadence changes (stretched by the budget, switched off
        by a failure, or back to every step)."""
        previous = self._prediction_cadence
        if cadence == previous:
            return ()
        self._prediction_cadence = cadence
        if previous is None and cadence == 1:
            return ()  # the normal start
        if cadence == 0:
            reason = "the predictor is off: " + (
                "the optimizer is not Adam/AdamW or SGD" if TWO_SECANT not in self.failed
                else "it failed (see its probe_error event)")
        elif cadence > 1:
            reason = (f"the overhead budget ({self.overhead_budget:g} of step time) cannot "
                      f"hold the predictor every step: it runs every {cadence} steps, and pages "
                      "come later or not at all")
        else:
            reason = "the predictor runs every step again"
        return (wire.Event(EventType.PREDICTION_DEGRADED.value, {
            "cadence": cadence, "previous": -1 if previous is None else previous,
            "reason": reason}),)

    def _beta2(self) -> float:
        """Adam's β2 of the first group (the phase labeller's time scale); 0.999 elsewhere."""
        g = self.ctx.optimizer.param_groups[0] if self.ctx.optimizer.param_groups else {}
        betas = g.get("betas")
        return float(betas[1]) if isinstance(betas, tuple | list) else 0.999

    def _agent_record(self, report: Report | None, step: int) -> wire.Record:
        scalars: dict[str, float] = {}
        layers: dict[str, dict[str, float]] = {}
        if report is not None:
            scalars[nm.AGENT_OVERHEAD] = report.overhead
            scalars[nm.AGENT_STEP_TIME] = report.step_time
            layers[nm.AGENT_CADENCE] = {k: float(v) for k, v in report.cadences.items()}
            if report.probe_overhead:
                layers[nm.AGENT_OVERHEAD] = dict(report.probe_overhead)
        c = self.transport.counters()
        if c is not None:
            for metric, attr in _COUNTERS:
                if hasattr(c, attr):
                    scalars[metric] = float(getattr(c, attr))
        cadence = self.scheduler.cadence(TWO_SECANT)
        scalars[nm.AGENT_PREDICTION_CADENCE] = float(cadence)
        if self.guard is not None:
            scalars[nm.GUARD_ACTIONS] = float(self.guard.actions)
            scalars[nm.GUARD_ACTIVE] = float(self.guard.active)
        return wire.Record(step=step, time=time.time(), scalars=scalars, layers=layers,
                           events=self._prediction_events(cadence))


def _merge(a: wire.Record, b: wire.Record) -> wire.Record:
    return dataclasses.replace(a, scalars={**a.scalars, **b.scalars},
                               layers={**a.layers, **b.layers}, events=(*a.events, *b.events))


class Reactive:
    """Reactive loss-spike / non-finite detection, the phase label, the last instability's
    loss rise, the first sustained spike of the loss (it re-arms the guard) and the swings of
    the clean loss (`eval_loss`, where logged), on drained records."""

    def __init__(self) -> None:
        from spikewatch.monitor.instability import InstabilityTracker
        from spikewatch.monitor.loss_swings import SwingCounter
        from spikewatch.monitor.reactive import ReactiveDetector

        self.loss = ReactiveDetector("olmo_core")
        self.grad = ReactiveDetector("olmo_core")
        # llm-foundry's rule (2x the running mean for > 4 steps): a spike that primes the guard;
        # unlike the z-score it never fires on a near-edge run's wobbles
        self.sustained = ReactiveDetector("llm_foundry")
        self.spiked_at: int | None = None  # the first step the sustained rule fired
        self.phases: Any = None
        self.instability = InstabilityTracker()
        self.swings = SwingCounter()
        self._swings_sent: tuple[int, int] | None = None  # None: no eval_loss logged yet

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
            if nm.LOSS in r.scalars:
                recovery = self.instability.recovery
                if math.isfinite(recovery):
                    scalars[nm.INSTABILITY_RECOVERY] = recovery
            self._count_swings(r, scalars, last=i == len(records) - 1)
            self._watch_sustained(r)
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

    def _watch_sustained(self, r: wire.Record) -> None:
        """Note the first step the loss spiked by llm-foundry's rule (it primes the guard)."""
        from spikewatch.monitor.reactive import Kind

        loss = r.scalars.get(nm.LOSS)
        if loss is None or self.spiked_at is not None:
            return
        d = self.sustained.update(r.step, loss)
        if d is not None and d.kind != Kind.NONFINITE:
            self.spiked_at = d.step

    def _count_swings(self, r: wire.Record, scalars: dict[str, float], *, last: bool) -> None:
        """Feed a logged eval_loss to the swing counter; stream the swing and recent-spike counts
        when they change and with a drain's last record (once any eval_loss was logged)."""
        value = r.scalars.get(nm.EVAL_LOSS)
        if value is not None:
            swings = self.swings.update(r.step, value)
        elif self._swings_sent is not None:
            swings = self.swings.count(r.step)
        else:
            return
        counts = (swings, self.swings.recent_spikes(r.step))
        if counts != self._swings_sent or last:
            scalars[nm.EVAL_LOSS_SWINGS] = float(counts[0])
            scalars[nm.EVAL_LOSS_SPIKES] = float(counts[1])
            self._swings_sent = counts


def record_ratio(scalars: Mapping[str, float]) -> float | None:
    """The record's stability ratio: the exact one where measured, else the two-secant's, else
    the plain secant's."""
    for name in (nm.STABILITY_RATIO, nm.STABILITY_RATIO_TWO_SECANT, nm.STABILITY_RATIO_SECANT):
        v = scalars.get(name)
        if v is not None:
            return v
    return None
