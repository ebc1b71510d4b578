"""The training loop every benchmark arm runs (a user's loop, with the agent or without it), and
one scenario trained both ways, interleaved.

Pacing. The suite's models are CPU stand-ins for real jobs: their steps take 1–10 ms where a real
job's take 50 ms to seconds, and the agent's overhead budget is a share of step time. With
`pace` > 0 both arms wait after each step until `pace` seconds have passed since the step began
(outside the timed part): the agent then sees the step time of a small real job and its 1 %
budget means what it means there. The unattached arm is paced too, so that the scenarios trained
at once (`--jobs`) mostly wait, as a real job's training thread does not share its CPU with
other jobs: an unpaced arm keeps a core busy, and the agents of the others then time their own
work inflated by the wait for a CPU (it stretched their predictors). The step-time ratio is
always of the timed (unpadded) work; a step that follows a sleep runs with cold caches, so on
these millisecond steps it is noisy (the agent's own streamed overhead is reported beside it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from benchmarks.early_warning._configs import Config
from benchmarks.early_warning.scenarios import Scenario, Task, by_name
from spikewatch.server.backtest import spike_onsets

if TYPE_CHECKING:
    from spikewatch.agent import Monitor

MIN_CHUNK = 25
CHUNKS = 12

@dataclass
class Arm:
    """One training of a scenario: its task, an optional attached monitor, what it recorded."""

    task: Task
    mon: Monitor | None = None
    # host floats, not the loss tensors: a kept 0-d result pins its allocation, and with it
    # glibc cannot reuse the activations freed around it (0.7 MB a step on the minibatch MLP,
    # 4.5 GB per 3000-step run: the suite ran out of memory on a 24 GB machine)
    losses: list[float] = field(default_factory=list)
    evals: list[float] = field(default_factory=list)
    step: int = 0
    timed: float = 0.0  # seconds inside forward/backward/step/log
    pace: float = 0.0  # seconds a step takes at least, wall time (0: as fast as it trains)
    # a baseline's hook between backward and the optimizer step (clipping, skip-step); False:
    # skip this step's update
    before_step: Callable[[Tensor], bool] | None = None

    def run(self, stop: int) -> float:
        """Train steps self.step .. stop − 1; the timed seconds of these steps.

        Only zero_grad, forward, backward, the schedule, the optimizer step and `mon.log` are
        timed: batch selection, the ground-truth evaluation, bookkeeping and pacing are not.
        """
        task, mon = self.task, self.mon
        spent = 0.0
        for t in range(self.step, stop):
            begun = time.perf_counter()
            if task.batch is not None:
                task.batch(t)
            ev = None
            if task.eval_loss is not None:
                with torch.no_grad():
                    ev = task.eval_loss().detach()
            t0 = time.perf_counter()
            task.optimizer.zero_grad(set_to_none=True)
            loss = task.closure()
            loss.backward()  # type: ignore[no-untyped-call]
            if task.schedule is not None:
                task.schedule(t, task.optimizer)
            if self.before_step is None or self.before_step(loss):
                task.optimizer.step()
            if mon is not None:
                if ev is None:
                    mon.log(loss.detach())
                else:
                    mon.log(loss.detach(), eval_loss=ev)
            spent += time.perf_counter() - t0
            self.losses.append(loss.item())  # a CPU step: no device to wait for
            if ev is not None:
                self.evals.append(ev.item())
            rest = self.pace - (time.perf_counter() - begun)
            if rest > 0:
                time.sleep(rest)
        self.step = max(self.step, stop)
        self.timed += spent
        return spent

    def series(self) -> tuple[list[float], list[float] | None]:
        """(the training loss, the ground-truth eval loss or None) per step, as floats."""
        return list(self.losses), (list(self.evals) if self.evals else None)

    def truth(self) -> list[float]:
        """The ground-truth series: the eval loss where the task has one, else the loss."""
        loss, ev = self.series()
        return ev if ev is not None else loss


def bits(xs: list[float]) -> Tensor:
    """The values' float32 bit patterns (NaN-safe exact comparison; a float32 loss read as a
    Python float converts back exactly)."""
    return torch.tensor(xs, dtype=torch.float64).to(torch.float32).view(torch.int32)


def first_mismatch(a: list[float], b: list[float]) -> int | None:
    """The first step where two recorded series differ bit for bit (None: identical)."""
    if len(a) != len(b):
        return min(len(a), len(b))
    ba, bb = bits(a), bits(b)
    diff = (ba != bb).nonzero()
    return int(diff[0, 0]) if diff.numel() else None


@dataclass(frozen=True)
class Trained:
    """One scenario trained with and without the agent."""

    wall: float  # seconds for both arms, setup and close included
    attached: float  # timed step seconds with the agent
    unattached: float  # ... and without it
    chunk_ratios: list[float]  # attached / unattached per interleaved chunk
    truth: str  # the ground-truth metric: "loss" or "eval_loss"
    onsets: list[int]  # of the unattached arm's ground truth
    mismatch: str | None  # None: the two arms' series are bit for bit identical


def chunk_size(steps: int) -> int:
    """Steps per interleaved chunk: about CHUNKS chunks, none shorter than MIN_CHUNK."""
    return max(MIN_CHUNK, math.ceil(steps / CHUNKS))


def train_pair(scenario: Scenario | str, config: Config, endpoint: str, run: str,
               chunk: int | None = None, pace: float = 0.0, threads: int = 1) -> Trained:
    """Train `scenario` twice, interleaved in chunks: once with the agent attached per `config`
    (streaming to `endpoint` as `run`, steps paced to `pace` s), once without; timings and the
    trajectory check. A worker process gets the scenario's name (its recipe does not pickle)."""
    import spikewatch

    torch.set_num_threads(threads)
    sc = by_name([scenario])[0] if isinstance(scenario, str) else scenario
    t_start = time.perf_counter()
    plain = Arm(sc.build(), pace=pace)
    watched = Arm(sc.build(), pace=pace)
    watched.mon = spikewatch.attach(watched.task.model, watched.task.optimizer, run=run,
                               endpoint=endpoint, **config.attach_kwargs(watched.task.closure))
    size = chunk or chunk_size(sc.steps)
    ratios: list[float] = []
    try:
        for i, start in enumerate(range(0, sc.steps, size)):
            stop = min(start + size, sc.steps)
            first, second = (plain, watched) if i % 4 in (0, 3) else (watched, plain)
            a, b = first.run(stop), second.run(stop)
            on, off = (a, b) if first is watched else (b, a)
            if off > 0:
                ratios.append(on / off)
    finally:
        watched.mon.close(timeout=30.0)
    problems = []
    for what, x, y in (("loss", plain.losses, watched.losses),
                       ("eval_loss", plain.evals, watched.evals)):  # fmt: skip
        bad = first_mismatch(x, y)
        if bad is not None:
            problems.append(f"{what} differs from step {bad}")
    truth = plain.truth()
    return Trained(time.perf_counter() - t_start, watched.timed, plain.timed, ratios,
                   "eval_loss" if plain.evals else "loss",
                   spike_onsets(list(enumerate(truth))), "; ".join(problems) or None)  # fmt: skip
