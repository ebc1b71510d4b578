"""A simulated training job for the load benchmark: the real `agent._transport.Transport` fed with
records shaped like the real agent's (global scalars, per-layer values, a spectral-alignment
histogram), run in its own process.

Acknowledgement latency is measured from `submit` to the moment the transport's sender thread
settles the ack: the process wraps the sender's `_settle` method (the single place every ack
passes through) to timestamp it, so nothing but a clock read is added to the real code path.
Each submit is one batch frame (the workload stays below `wire.MAX_RECORDS` and
`wire.MAX_FRAME_BYTES`, checked), so batch k carries seq k + 1 after the hello's seq 1.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from spikewatch.protocol import names as nm
from spikewatch.protocol import wire

# Global scalars in the order a workload takes them (all real metric names of the catalogue).
SCALARS: tuple[str, ...] = (
    nm.LOSS, nm.GRAD_NORM, nm.LR, nm.BETA1, nm.BETA2, nm.RHO, nm.SQRT_V_NORM, nm.SQRT_V_DECAY,
    nm.PHASE, nm.STABILITY_RATIO_SECANT, nm.LAMBDA_TWO_SECANT, nm.MAX_PROB, nm.ENTROPY,
    nm.PROB_IMPURITY, nm.LOGIT_NORM, nm.SA_SIGN_DIVERSITY, nm.SA_MEAN, nm.GRAD_SPIKE_SHARE,
    nm.AGENT_OVERHEAD, nm.AGENT_STEP_TIME, nm.LAMBDA_GRAD, nm.STABILITY_RATIO, nm.LAMBDA_MAX,
    nm.STABILITY_RATIO_MAX, nm.GRAD_TOP_EIG_COS,
)
LAYER_METRICS: tuple[str, ...] = (nm.RHO, nm.SA_MEAN)


@dataclass(frozen=True, slots=True)
class Workload:
    """The shape of one batch: `records` steps, each with `scalars` global values, the two
    `LAYER_METRICS` for each of `layers` layers and one `bins`-bin histogram."""

    records: int = 10
    scalars: int = 20
    layers: int = 8
    bins: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.scalars <= len(SCALARS):
            raise ValueError(f"scalars must be 1..{len(SCALARS)}")
        if not 1 <= self.records <= wire.MAX_RECORDS or self.layers < 0 or self.bins < 1:
            raise ValueError("records must be 1..MAX_RECORDS, layers >= 0, bins >= 1")

    @property
    def points_per_record(self) -> int:
        """Numbers per step: scalars, per-layer values and histogram bins."""
        return self.scalars + len(LAYER_METRICS) * self.layers + self.bins

    @property
    def points_per_batch(self) -> int:
        return self.records * self.points_per_record

    def layer_names(self) -> list[str]:
        return [f"blocks.{j}.mlp" for j in range(self.layers)]

    def record(self, step: int) -> wire.Record:
        """The record of one step: smooth, slightly varying values like a real run's."""
        x = step * 0.01
        scalars = {n: 1.0 + 0.1 * math.sin(x + i) for i, n in enumerate(SCALARS[:self.scalars])}
        layers = {m: {ln: 0.5 + 0.01 * math.cos(x + k + j)
                      for j, ln in enumerate(self.layer_names())}
                  for k, m in enumerate(LAYER_METRICS)}
        counts = tuple((step + b) % 7 for b in range(self.bins))
        hist = {nm.SA_HIST: {"blocks.0.mlp": wire.Histogram(-1.0, 1.0, counts)}}
        return wire.Record(step, time.time(), scalars, layers, hist)

    def batch(self, first_step: int) -> list[wire.Record]:
        return [self.record(first_step + i) for i in range(self.records)]


class _AckClock:
    """Timestamps of acknowledgements of this process's transports, keyed by (session, seq)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.times: dict[tuple[str, int], float] = {}
        self.count = 0

    def install(self, transport: Any) -> None:
        """Wrap the `_settle` method of the transport's sender class (before anything is sent)."""
        cls = type(transport._sender)
        settle = cls._settle

        def timed(sender: Any, session: str, seq: int) -> int:
            n = int(settle(sender, session, seq))
            if n:
                now = time.perf_counter()
                with self.cond:
                    self.times[(session, seq)] = now
                    self.count += 1
                    self.cond.notify_all()
            return n

        cls._settle = timed


def run_agent(endpoint: str, run: str, workload: Workload, seconds: float, window: int,
              interval: float, ready: Any, start: Any, out: Any) -> None:
    """Process entry point: hello, wait for `start`, stream for `seconds` with at most `window`
    batches unacknowledged (and, if `interval` > 0, one batch per `interval` seconds, like a
    job draining on a cadence), wait for the last acks, put a result dict on `out`."""
    from spikewatch.agent._transport import Transport

    clock = _AckClock()
    frame = wire.encode(wire.Batch(wire.Header("0" * 32, 1, run), tuple(workload.batch(1))))
    if len(frame) > wire.MAX_FRAME_BYTES:
        raise SystemExit(f"workload batch is {len(frame)} bytes, over one frame")
    t = Transport(endpoint, run=run, max_queue=max(256, 2 * window))  # defaults otherwise
    clock.install(t)
    try:
        t.hello({"simulated": True, "workload": repr(workload)})
        with clock.cond:
            clock.cond.wait_for(lambda: clock.count >= 1, timeout=120)
        ready.put(run)
        start.wait(300)
        submitted: list[float] = []
        step = 1
        t0 = time.perf_counter()
        end = t0 + seconds
        if interval > 0:  # jobs are not in lock-step: each starts at its own phase
            t0 += random.uniform(0.0, interval)
            time.sleep(t0 - time.perf_counter())
        while time.perf_counter() < end:
            with clock.cond:
                clock.cond.wait_for(lambda: len(submitted) + 1 - clock.count < window,
                                    timeout=max(0.0, end - time.perf_counter()))
            if time.perf_counter() >= end:
                break
            records = workload.batch(step)
            submitted.append(time.perf_counter())
            if not t.submit(records):
                submitted.pop()
                break  # dropped: the transport is saturated; counted below
            step += workload.records
            if interval > 0:
                time.sleep(max(0.0, t0 + len(submitted) * interval - time.perf_counter()))
        with clock.cond:
            clock.cond.wait_for(lambda: clock.count >= len(submitted) + 1, timeout=120)
        lat = [clock.times[(t.session, k + 2)] - s for k, s in enumerate(submitted)
               if (t.session, k + 2) in clock.times]
        in_window = sum(1 for k in range(len(submitted))
                        if clock.times.get((t.session, k + 2), math.inf) <= end)
        c = t.counters()
        out.put({"run": run, "submitted": len(submitted), "acked": len(lat),
                 "acked_in_window": in_window, "lat": lat, "dropped": c.dropped,
                 "resent": c.resent, "rejected": c.rejected, "seconds": seconds})
    finally:
        t.close(timeout=5.0)
