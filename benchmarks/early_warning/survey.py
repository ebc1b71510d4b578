"""Train scenarios WITHOUT the agent and print their spike onsets and loss range, so anyone can
re-verify the suite (spiking scenarios spike, controls do not) on their own CPU.

    python -m benchmarks.early_warning.survey                     # every scenario
    python -m benchmarks.early_warning.survey --family cnn        # one family
    python -m benchmarks.early_warning.survey --scenarios A,B     # these
    python -m benchmarks.early_warning.survey --edge cnn,tf-L1    # edge sweeps (EDGES), or all

Onsets are `server.backtest.spike_onsets` of the ground truth (the loss, or `eval_loss` for
minibatch scenarios); `peak rise` is the largest loss[t] / min(loss[t−50 .. t−1]) (2 = a spike),
which shows how close a control came; `peak ρ` the largest exact ρ = ‖g‖/‖√v̂‖ after an optimizer
step past the first `RHO_FROM` steps (Adam only; `monitor.precond_decay`), what the guard's
catch-up of v reads (`Guard.catch_rho`). Exit status 1 if a control spiked or a spiking scenario
did not.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from spikewatch.server.backtest import FACTOR, WINDOW, spike_onsets

RHO_FROM = 200  # steps of warm-up before the peak ρ counts (v̂ is young and ρ ≈ 1–5 there)


@dataclass(frozen=True)
class Survey:
    """One unattached training of a scenario."""

    name: str
    family: str
    control: bool
    steps: int
    truth: str
    onsets: list[int]
    loss_min: float
    loss_max: float  # after the first WINDOW steps
    loss_last: float
    peak_rise: float
    nonfinite: int
    wall_s: float
    cpu_s: float
    peak_rho: float = math.nan  # Adam's largest ρ after RHO_FROM steps (NaN: not Adam)

    @property
    def verdict(self) -> str:
        if self.control:
            return "ok" if not self.onsets else "CONTROL SPIKED"
        return "ok" if self.onsets else "DID NOT SPIKE"


def peak_rise(xs: Sequence[float], window: int = WINDOW) -> float:
    """max over t ≥ window of xs[t] / min(finite xs[t − window .. t − 1]) (inf if non-finite)."""
    best = 0.0
    for t in range(window, len(xs)):
        if not math.isfinite(xs[t]):
            return math.inf
        prev = [v for v in xs[t - window : t] if math.isfinite(v)]
        if prev and min(prev) > 0:
            best = max(best, xs[t] / min(prev))
    return best


def train_unattached(build: Callable[[], object], steps: int, rho: list[float] | None = None
                     ) -> tuple[str, list[float], float, float]:  # fmt: skip
    """(ground-truth metric, its series, wall s, CPU s) of one training without the agent;
    `rho`: filled with Adam's exact ρ after each optimizer step (its reads are timed too)."""
    import torch

    from benchmarks.early_warning._train import Arm
    from benchmarks.early_warning.scenarios import Task
    from spikewatch.monitor.precond_decay import PreconditionerDecay

    task = build()
    assert isinstance(task, Task)
    if rho is not None and isinstance(task.optimizer, torch.optim.Adam):
        meter = PreconditionerDecay(include_current_grad=False)  # after the step: v has g_t
        task.optimizer.register_step_post_hook(
            lambda opt, args, kwargs: rho.append(float(meter.update(opt).rho)))
    arm = Arm(task)
    w0, c0 = time.perf_counter(), time.process_time()
    arm.run(steps)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return ("eval_loss" if arm.evals else "loss"), arm.truth(), wall, cpu


def survey(name: str, family: str, control: bool, steps: int,
           build: Callable[[], object]) -> Survey:  # fmt: skip
    """Train once without the agent and summarise the ground truth."""
    rho: list[float] = []
    truth, xs, wall, cpu = train_unattached(build, steps, rho)
    late_rho = [r for r in rho[RHO_FROM:] if math.isfinite(r)]
    finite = [v for v in xs if math.isfinite(v)]
    late = [v for v in xs[WINDOW:] if math.isfinite(v)]
    return Survey(name, family, control, steps, truth, spike_onsets(list(enumerate(xs))),
                  min(finite, default=math.nan), max(late, default=math.nan),
                  xs[-1] if xs else math.nan, peak_rise(xs), len(xs) - len(finite),
                  round(wall, 2), round(cpu, 2), max(late_rho, default=math.nan))  # fmt: skip


def _onsets(xs: Sequence[int], limit: int = 8) -> str:
    if not xs:
        return "-"
    head = ",".join(map(str, xs[:limit]))
    return head + (f",… ({len(xs)})" if len(xs) > limit else "")


def table(rows: Sequence[Survey]) -> str:
    """One line per scenario."""
    w = max([8, *(len(r.name) for r in rows)])
    out = [f"{'scenario':<{w}}  {'family':<14}  {'ctl':<3}  {'steps':>5}  {'truth':<9}  "
           f"{'onsets (unattached)':<40}  {'min':>9}  {'max':>9}  {'last':>9}  {'peak rise':>9}  "
           f"{'peak ρ':>6}  {'wall s':>6}  {'cpu s':>6}  verdict"]  # fmt: skip
    for r in rows:
        out.append(f"{r.name:<{w}}  {r.family:<14}  {'yes' if r.control else 'no':<3}  "
                   f"{r.steps:>5}  {r.truth:<9}  {_onsets(r.onsets):<40}  {r.loss_min:>9.3g}  "
                   f"{r.loss_max:>9.3g}  {r.loss_last:>9.3g}  {r.peak_rise:>9.2f}  "
                   f"{r.peak_rho:>6.2f}  {r.wall_s:>6.1f}  {r.cpu_s:>6.1f}  {r.verdict}"
                   + (f" ({r.nonfinite} non-finite)" if r.nonfinite else ""))  # fmt: skip
    return "\n".join(out)


def edge(label: str, echo: bool = True) -> str:
    """Run one edge sweep: per lr, each seed's onsets; the edge (smallest lr at which any seed
    spikes within the budget) and the largest lr below it at which none did."""
    from benchmarks.early_warning.scenarios import EDGES

    sw = EDGES[label]
    lines = [f"edge sweep {label} ({sw.family}): {sw.steps} steps, seeds "
             f"{','.join(map(str, sw.seeds))}"]  # fmt: skip
    spiking: dict[float, int] = {}
    for lr in sw.lrs:
        res = [survey(f"{label}-lr{lr:g}-s{s}", sw.family, False, sw.steps, sw.make(lr, s))
               for s in sw.seeds]  # fmt: skip
        spiking[lr] = sum(bool(r.onsets) for r in res)
        line = (f"  lr {lr:<8g} spiking {spiking[lr]}/{len(res)}: "
                + " | ".join(_onsets(r.onsets, 4) for r in res)
                + f"   (peak rise {', '.join(f'{r.peak_rise:.2f}' for r in res)})")  # fmt: skip
        lines.append(line)
        if echo:
            print(line, file=sys.stderr, flush=True)
    first = next((lr for lr in sw.lrs if spiking[lr]), None)
    if first is None:
        lines.append(f"  no spike up to lr {max(sw.lrs):g}")
    else:
        below = [lr for lr in sw.lrs if lr < first]
        safe = (f"; largest lr below it without a spike: {max(below):g} "
                f"({max(below) / first:.2f}× the edge)" if below else "")
        lines.append(f"  edge: lr {first:g} (first lr with a spiking seed){safe}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Survey the selected scenarios (or edges); 1 if a verdict is not ok."""
    import torch

    from benchmarks.early_warning.scenarios import EDGES, QUICK, SCENARIOS, by_name

    p = argparse.ArgumentParser(prog="python -m benchmarks.early_warning.survey",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default=None, metavar="A,B")
    p.add_argument("--family", default=None, metavar="F[,G]")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--edge", default=None, metavar="LABEL,..|all",
                   help=f"edge sweeps instead: {', '.join(EDGES)}")
    p.add_argument("--json", type=Path, default=None, metavar="FILE")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    if args.edge:
        labels = list(EDGES) if args.edge == "all" else args.edge.split(",")
        unknown = [x for x in labels if x not in EDGES]
        if unknown:
            print(f"survey: unknown edge sweep(s) {unknown}; known: {', '.join(EDGES)}",
                  file=sys.stderr)
            return 2
        for label in labels:
            print(edge(label), flush=True)
        print(f"\n{time.perf_counter() - t0:.0f} s")
        return 0
    try:
        if args.scenarios:
            chosen = by_name(args.scenarios.split(","))
        elif args.family:
            fams = set(args.family.split(","))
            chosen = [s for s in SCENARIOS if s.family in fams]
        else:
            chosen = by_name(list(QUICK)) if args.quick else list(SCENARIOS)
    except KeyError as e:
        print(f"survey: {e.args[0]}", file=sys.stderr)
        return 2
    rows = []
    for sc in chosen:
        rows.append(survey(sc.name, sc.family, sc.control, sc.steps, sc.build))
        r = rows[-1]
        print(f"  {r.name}: onsets {r.onsets}, {r.wall_s:.1f} s, {r.verdict}", file=sys.stderr,
              flush=True)
    print(table(rows))
    print(f"\n{len(rows)} scenarios in {time.perf_counter() - t0:.0f} s (training CPU "
          f"{sum(r.cpu_s for r in rows):.0f} s, one arm, torch threads {torch.get_num_threads()}); "
          f"spike = ground truth > {FACTOR:g}× its {WINDOW}-step minimum")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0 if all(r.verdict == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
