"""The agent's cost on a step where no probe is due: hooks, `log()` and drains, timed in situ.

The interleaved benchmark (agent_overhead.py) measures the whole cost but resolves it only to
about ±0.5%; this one breaks the fixed per-step part down. It trains the small transformer of
agent_overhead.py with every scheduled probe switched off except the hyper-parameter probe (the
one that runs every step), wraps the monitor's entry points in timers and prints microseconds
per call and per step. Timings are taken inside the real training loop on purpose: after a
forward/backward/Adam step the interpreter's caches are cold, and the same code costs several
times what a tight loop would show.

`--predictor` keeps the two-secant predictor on as well (every step: the budget is lifted so
that it is never stretched, which is the configuration to name next to its numbers) and breaks
its cost down: the read of the sample every step (`record`), the arithmetic (`flush`, in
batches below the edge) and the whole probe.

    .venv/bin/python benchmarks/agent_step_path.py [--steps 400] [--warmup 300] [--predictor]
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._tinylm import BATCH, LR_SCHEDULES, SEQ, VOCAB, Job, TinyLM, disable_probes
from spikewatch import agent
from spikewatch.agent._monitor import Monitor
from spikewatch.agent._profiles import FIXED, PROBES, TWO_SECANT
from spikewatch.agent._two_secant_probe import TwoSecantProbe
from spikewatch.monitor.two_secant import TwoSecant
from tests.agent._peer import Peer

# the monitor's own entry points: `_plan` looks up the next step's due probes and arms forward
# hooks; `_run` wraps a due probe (none here: the every-step hparams probe runs inside the hooks)
ENTRY_POINTS = ("_pre_hook", "_post_hook", "log", "_drain", "_plan", "_run")
PREDICTOR_PARTS = ((TwoSecantProbe, "post", "predictor"), (TwoSecant, "record", "  record"),
                   (TwoSecant, "flush", "  flush"))


def _timed(fn: Callable[..., Any], totals: dict[str, float], calls: collections.Counter[str],
           name: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - t0
            calls[name] += 1
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=300, help="steps before timing (the "
                    "predictor's bias correction settles after ~200 at beta1 = 0.9)")
    ap.add_argument("--predictor", action="store_true", help="keep the two-secant predictor on "
                    "(overhead_budget=inf: every step) and time its parts")
    ap.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="none",
                    help="cosine: a warm-up + cosine LambdaLR steps after every optimizer step")
    args = ap.parse_args()
    torch.set_num_threads(1)
    totals: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter[str] = collections.Counter()
    for name in ENTRY_POINTS:
        setattr(Monitor, name, _timed(getattr(Monitor, name), totals, calls, name))
    parts = PREDICTOR_PARTS if args.predictor else ()
    for cls, attr, name in parts:
        setattr(cls, attr, _timed(getattr(cls, attr), totals, calls, name))
    peer = Peer().start()
    try:
        torch.manual_seed(0)
        job = Job(TinyLM(), torch.device("cpu"), torch.randint(0, VOCAB, (BATCH, SEQ + 1)),
                  lr_schedule=args.lr_schedule)
        mon = job.monitor = agent.attach(
            job.model, job.opt, run="bench-step-path", endpoint=peer.endpoint,
            logits_module=job.model.head,
            overhead_budget=float("inf") if args.predictor else None)
        kept = FIXED | {TWO_SECANT} if args.predictor else FIXED
        disable_probes(mon, (p for p in PROBES if p not in kept))
        mon._plan(mon.step)  # disarm the forward probes switched off above
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                totals.clear()
                calls.clear()
                t0 = time.perf_counter()
            job.step()
        step_time = (time.perf_counter() - t0) / args.steps
        mon.close()
    finally:
        peer.stop()
    hooks = totals["_pre_hook"] + totals["_post_hook"] + totals["log"]
    kept_note = ("every probe off but hparams and the predictor (overhead_budget=inf)"
                 if args.predictor else "every probe off but hparams")
    if args.lr_schedule != "none":
        kept_note += f", lr schedule {args.lr_schedule} (the lr changes every step)"
    print(f"agent step path: TinyLM, 1 thread, {args.steps} steps, step {1e3 * step_time:.1f} ms, "
          f"{kept_note}")
    print(f"{'entry point':12s} {'calls':>6s} {'µs/call':>8s} {'µs/step':>8s}")
    for name in (*ENTRY_POINTS, *(name for _, _, name in parts)):
        n = calls[name]
        if n:
            print(f"{name:12s} {n:6d} {1e6 * totals[name] / n:8.1f} "
                  f"{1e6 * totals[name] / args.steps:8.1f}")
    per_step = hooks / args.steps
    print(f"total (pre + post + log; drains, arming and probes run inside the hooks): "
          f"{1e6 * per_step:.1f} µs per step = {100 * per_step / step_time:.2f}% of step time")


if __name__ == "__main__":
    main()
