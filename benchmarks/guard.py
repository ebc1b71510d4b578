"""The guard benchmark: the early-warning scenarios trained with and without the guard, and
with the baselines that act after the fact, in the same run.

    python -m benchmarks.guard [--scenarios A,B] [--family F] [--arms none,guard,...]
                               [--guard-action lr|v|eps] [--guard-rise R] [--guard-rho R]
                               [--guard-factor F] [--guard-rearm] [--guard-ramp-steps N]
                               [--guard-swings N] [--no-guard-swings-before-spike]
                               [--pace-ms 50] [--jobs 12] [--json FILE]

Arms (each trains the scenario from the same seed):

- ``none``: no agent, no mitigation (the reference trajectory);
- ``guard``: `spikewatch.attach(model, opt, guard=True)` (the `--guard-*` options change its
  policy and are named in the output), everything else the defaults (no
  closure, default profile and 1 % budget), steps paced like the early-warning suite so the budget
  means what it means on a real job; no server is needed (the agent spools);
- ``skip``: OLMo-core's and Levanter's reactive rule: skip the optimizer step when the loss is
  above mean + 6σ of the last 128 steps (read on the host every step);
- ``zclip``: `zclip.ZClip()` with its defaults, before every optimizer step (PyPI `zclip`);
- ``eps0.1``: Adam's ε = 0.1 from the start (what removed the seed's spikes, at a price).

Per run: spike onsets of the ground-truth loss, the final loss (mean of the last 100 steps),
the steps to reach the unguarded run's best loss, guard actions, and whether the guarded run is
bit-identical to the reference where the guard never acted. Totals per family and arm.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchmarks.early_warning._train import Arm, first_mismatch
from benchmarks.early_warning.scenarios import SCENARIOS, Scenario, by_name
from spikewatch.agent._guard import Guard
from spikewatch.server._cli_progress import track
from spikewatch.server.backtest import spike_onsets

ARMS = ("none", "guard", "skip", "zclip", "eps0.1")
UNUSED_ENDPOINT = "tcp://127.0.0.1:9"  # discard port: nothing listens, the agent spools


@dataclass
class Result:
    scenario: str
    family: str
    control: bool
    arm: str
    onsets: list[int]
    final: float  # mean ground-truth loss of the last 100 steps
    curve: list[float] = field(repr=False)
    actions: int = 0  # guard actions (guard arm)
    identical: bool | None = None  # guard arm without actions: same losses as `none`
    timed: float = 0.0  # seconds of zero_grad/forward/backward/step/log
    wall: float = 0.0


class SkipStep:
    """Skip the optimizer step when the loss is above mean + `sigmas`·σ of the last `window`."""

    def __init__(self, window: int = 128, sigmas: float = 6.0) -> None:
        self.window, self.sigmas = window, sigmas
        self.history: list[float] = []

    def skip(self, loss: float) -> bool:
        h = self.history[-self.window:]
        out = not math.isfinite(loss)
        if not out and len(h) >= 20:
            out = loss > statistics.fmean(h) + self.sigmas * statistics.pstdev(h)
        if not out:
            self.history.append(loss)
        return out


def _train_plain(sc: Scenario, arm: str) -> tuple[list[float], float]:
    """The reference and the baselines: (ground truth per step, timed seconds)."""
    task = sc.build()
    hook: Callable[[torch.Tensor], bool] | None = None
    if arm == "eps0.1":
        for g in task.optimizer.param_groups:
            if "eps" in g:
                g["eps"] = 0.1
    elif arm == "zclip":
        from zclip import ZClip

        clip = ZClip()

        def hook(loss: torch.Tensor) -> bool:
            clip.step(task.model)
            return True
    elif arm == "skip":
        skipper = SkipStep()

        def hook(loss: torch.Tensor) -> bool:
            return not skipper.skip(float(loss.detach()))
    plain = Arm(task, before_step=hook)
    timed = plain.run(sc.steps)
    return plain.truth(), timed


def _train_guarded(sc: Scenario, pace: float, policy: Guard, spool: str
                   ) -> tuple[list[float], float, int]:  # fmt: skip
    import spikewatch

    arm = Arm(sc.build(), pace=pace)
    arm.mon = spikewatch.attach(arm.task.model, arm.task.optimizer, run=sc.name,
                                endpoint=UNUSED_ENDPOINT, spool_dir=spool, guard=policy)
    try:
        arm.run(sc.steps)
        guard = arm.mon._guard
        actions = guard.actions if guard is not None else 0
    finally:
        arm.mon.close(timeout=1.0)
    return arm.truth(), arm.timed, actions


def run_one(name: str, arm: str, pace: float, policy: Guard) -> Result:
    torch.set_num_threads(1)
    (sc,) = by_name([name])
    t0 = time.perf_counter()
    actions = 0
    if arm == "guard":
        with tempfile.TemporaryDirectory(prefix="spikewatch-guard-") as spool:
            curve, timed, actions = _train_guarded(sc, pace, policy, spool)
    else:
        curve, timed = _train_plain(sc, arm)
    tail = [x for x in curve[-100:] if math.isfinite(x)]
    final = statistics.fmean(tail) if tail else math.inf
    return Result(sc.name, sc.family, sc.control, arm, spike_onsets(list(enumerate(curve))),
                  final, curve, actions, None, timed, time.perf_counter() - t0)


def _reach(curve: list[float], target: float) -> int | None:
    return next((i for i, x in enumerate(curve) if x <= target), None)


def mark_identical(results: list[Result]) -> None:
    """Set `identical` on each guarded run: bit for bit the reference's ground truth."""
    ref = {r.scenario: r.curve for r in results if r.arm == "none"}
    for r in results:
        if r.arm == "guard" and r.scenario in ref:
            r.identical = first_mismatch(ref[r.scenario], r.curve) is None


def report(results: list[Result]) -> str:
    """Per run, then per family and arm."""
    by = {(r.scenario, r.arm): r for r in results}
    lines = [f"{'scenario':<30} {'arm':<7} {'ctl':<3} {'onsets':>6} {'final loss':>11} "
             f"{'reach best':>10} {'actions':>7}  note"]
    for r in results:
        ref = by.get((r.scenario, "none"))
        note = ""
        reach = "-"
        if ref is not None:
            best = min((x for x in ref.curve if math.isfinite(x)), default=math.nan)
            at = _reach(r.curve, best)
            reach = "never" if at is None else str(at)
            if r.arm == "guard":
                note = "bit-identical to none" if r.identical else (
                    "" if r.actions else "!! CHANGED WITHOUT AN ACTION")
        lines.append(f"{r.scenario:<30} {r.arm:<7} {'yes' if r.control else 'no':<3} "
                     f"{len(r.onsets):>6} {r.final:>11.4g} {reach:>10} "
                     f"{r.actions if r.arm == 'guard' else '':>7}  {note}")
    lines.append("")
    fams: dict[tuple[str, str], list[Result]] = defaultdict(list)
    for r in results:
        fams[(r.family, r.arm)].append(r)
    for (fam, arm), rs in sorted(fams.items()):
        spiking = [r for r in rs if not r.control]
        ctl = [r for r in rs if r.control]
        worse = 0
        for r in spiking:
            ref = by.get((r.scenario, "none"))
            if ref is not None and r.final > ref.final * 1.0001:
                worse += 1
        lines.append(
            f"[{fam}] {arm:<7} onsets on spiking runs {sum(len(r.onsets) for r in spiking):>3}, "
            f"final loss worse than none on {worse}/{len(spiking)}, controls with onsets "
            f"{sum(bool(r.onsets) for r in ctl)}/{len(ctl)}"
            + (f", guard actions on controls {sum(r.actions for r in ctl)}, controls "
               f"bit-identical {sum(bool(r.identical) for r in ctl)}/{len(ctl)}"
               if arm == "guard" else ""))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.guard", description=__doc__)
    ap.add_argument("--scenarios", default=None, metavar="A,B")
    ap.add_argument("--family", default=None, help="only this family's scenarios")
    ap.add_argument("--arms", default=",".join(ARMS), metavar="A,B")
    ap.add_argument("--guard-action", default=None, choices=("lr", "v", "eps"),
                    help="the guard's action (default: Guard's, what guard=True gives)")
    ap.add_argument("--guard-rise", type=float, default=None,
                    help="the guard acts only after an instability that moved the loss this much "
                         "(default: Guard's)")
    ap.add_argument("--guard-rho", type=float, default=None,
                    help="the guard acts only while rho is below this (default: Guard's)")
    ap.add_argument("--guard-factor", type=float, default=None,
                    help="how far the action shrinks the step (default: Guard's)")
    ap.add_argument("--guard-rearm", action=argparse.BooleanOptionalAction, default=None,
                    help="after a first action, act on the ratio and rho alone (default: Guard's)")
    ap.add_argument("--guard-swings", type=int, default=None,
                    help="completed swings of the logged eval_loss in 300 steps that trigger the "
                         "guard (0: off; default: Guard's)")
    ap.add_argument("--guard-swings-before-spike", action=argparse.BooleanOptionalAction,
                    default=None, help="count swings before the clean loss first spiked "
                    "(--no-...: only after, as the page; default: Guard's)")
    ap.add_argument("--guard-ramp-steps", type=int, default=None,
                    help="steps over which a threshold-dropping hyper-parameter jump is applied "
                         "(0: at once; default: Guard's)")
    ap.add_argument("--guard-catch-rho", type=float, default=None,
                    help="rho at which a runaway update's v is caught up (0: off; default: "
                         "Guard's)")
    ap.add_argument("--pace-ms", type=float, default=50.0,
                    help="the guarded arm's steps take at least this long (default 50)")
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    names = (args.scenarios.split(",") if args.scenarios else
             [s.name for s in SCENARIOS if args.family in (None, s.family)])  # fmt: skip
    arms = args.arms.split(",")
    if bad := [a for a in arms if a not in ARMS]:
        print(f"guard: unknown arm(s) {bad}; choose from {ARMS}", file=sys.stderr)
        return 2
    jobs = [(n, a) for n in names for a in arms]
    knobs = {"action": args.guard_action, "rise": args.guard_rise, "rho": args.guard_rho,
             "ramp_steps": args.guard_ramp_steps, "factor": args.guard_factor,
             "rearm": args.guard_rearm, "swings": args.guard_swings,
             "swings_before_spike": args.guard_swings_before_spike,
             "catch_rho": args.guard_catch_rho}
    policy = Guard(**{k: v for k, v in knobs.items() if v is not None})
    t0 = time.perf_counter()
    # the paced guarded runs first, on their own: an unpaced baseline keeps a core busy, and the
    # agents beside it then time their own work inflated by the wait and stretch the predictor
    results: dict[tuple[str, str], Result] = {}
    for phase in (["guard"], [a for a in arms if a != "guard"]):
        mine = [(n, a) for n, a in jobs if a in phase]
        if not mine:
            continue
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futs = {job: pool.submit(run_one, *job, args.pace_ms / 1e3, policy) for job in mine}
            for job, f in track(futs.items(), f"training ({', '.join(phase)})", total=len(futs)):
                results[job] = f.result()
    ordered = [results[job] for job in jobs]
    mark_identical(ordered)
    print(report(ordered))
    print(f"\n{len(ordered)} runs in {time.perf_counter() - t0:.0f} s [guard arm: attach defaults "
          f"+ guard={policy}, no closure, steps paced to {args.pace_ms:g} ms]")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in ordered]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
