"""The clean-loss swing rules scored as pages on a grid of minibatch runs.

    python -m benchmarks.early_warning.swing_study [--jobs 2] [--json FILE]

Trains the minibatch families unattached over a grid of learning rates around their edge and
seeds that the suite does not use (the seed MLP on batches of 32 of its 200 points, lr
0.0003–0.003, edge 0.0006; the fixed-pool transformer in batches of 32, lr 0.005–0.03, edge
0.01), and replays each run's full-data loss through `monitor.loss_swings.SwingCounter` as the
default pack's `clean_loss_swings` rule reads it (firing while ≥ 1 swing). Scored as if it were a
page, with the suite's definitions (`server.scoring`): onsets led ≥ 1 step, pages graded by the
largest rise within 100 steps, and pages on the runs that never spiked. About 2.5 minutes on 2
cores. The training is deterministic, so the numbers are the same on every run of one machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from spikewatch.monitor.loss_swings import SwingCounter
from spikewatch.protocol.names import EVAL_LOSS_SPIKES, EVAL_LOSS_SWINGS
from spikewatch.server.backtest import replay, score
from spikewatch.server.rules import Rule, load_rules
from spikewatch.server.types import Observation

MLP_LRS = (0.0003, 0.0004, 0.0005, 0.0006, 0.0008, 0.001, 0.0015, 0.002, 0.003)
MLP_SEEDS = (0, 1, 2, 3, 4, 5, 6)
TF_LRS = (0.005, 0.007, 0.01, 0.02, 0.03)
TF_SEEDS = (0, 1, 2, 3, 4)
RULES = ("clean_loss_swings", "clean_loss_swings_after_spike")


@dataclass(frozen=True)
class Row:
    """One run and one rule: the run's onsets, the rule's leads and its firings' grades."""

    name: str
    group: str  # family and lr
    rule: str
    onsets: list[int]
    leads: list[int]
    grades: list[str]


def _train(spec: tuple[str, float, int]) -> tuple[str, str, list[float]]:
    import torch

    from benchmarks.early_warning.scenarios._variants import variant
    from benchmarks.early_warning.survey import train_unattached

    torch.set_num_threads(1)
    family, lr, seed = spec
    name = f"{family}-lr{lr:g}-s{seed}"
    sc = variant(name)
    assert sc is not None, name
    _, xs, _, _ = train_unattached(sc.build, sc.steps)
    return name, f"{family} lr {lr:g}", xs


@functools.cache
def _rules() -> tuple[Rule, ...]:
    return tuple(r for r in load_rules() if r.name in RULES)


def score_run(name: str, group: str, xs: Sequence[float]) -> list[Row]:
    """The run's swing and recent-spike counts, as the agent streams them, replayed through the
    default pack's rules on them and scored as pages are (`server.backtest`); one row per rule."""
    counter = SwingCounter()
    obs = []
    for t, v in enumerate(xs):
        swings = counter.update(t, v)
        obs.append((Observation(name, t, float(t), {
            EVAL_LOSS_SWINGS: float(swings), EVAL_LOSS_SPIKES: float(counter.recent_spikes(t))}),
            ()))  # fmt: skip
    rules = list(_rules())
    rep = score(name, rules, replay(rules, obs), list(enumerate(xs)))
    return [Row(name, group, s.rule, rep.onsets, [x for x in s.leads if x is not None], s.grades)
            for s in rep.rules]


def summary(rows: Sequence[Row]) -> str:
    """Per rule, group and in total: onsets led, median lead, grades, runs without onsets
    fired on."""
    lines = [f"{'group':<20} {'runs':>4} {'onsets led':>11} {'lead':>5} {'true/minor/false':>17} "
             f"{'no-spike runs fired on':>23}"]  # fmt: skip
    groups = sorted({r.group for r in rows}, key=lambda g: (g.split()[0], float(g.split()[-1])))

    def line(label: str, rs: Sequence[Row]) -> str:
        ons = sum(len(r.onsets) for r in rs)
        leads = [x for r in rs for x in r.leads]
        g = [x for r in rs for x in r.grades]
        quiet = [r for r in rs if not r.onsets]
        med = f"{statistics.median(leads):.0f}" if leads else "-"
        return (f"{label:<20} {len(rs):>4} {len(leads):>4}/{ons:<6} {med:>5} "
                f"{g.count('true'):>7}/{g.count('minor')}/{g.count('false'):<5} "
                f"{sum(bool(r.grades) for r in quiet):>10}/{len(quiet)}")  # fmt: skip

    for rule in sorted({r.rule for r in rows}):
        mine = [r for r in rows if r.rule == rule]
        lines.append(f"-- {rule}")
        lines += [line(g, [r for r in mine if r.group == g]) for g in groups]
        lines.append(line("all", mine))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.early_warning.swing_study",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, metavar="FILE")
    args = p.parse_args(argv)
    specs = ([("mb-mlp", lr, s) for lr in MLP_LRS for s in MLP_SEEDS]
             + [("mb-tf-pool", lr, s) for lr in TF_LRS for s in TF_SEEDS])  # fmt: skip
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        rows = [row for r in pool.map(_train, specs) for row in score_run(*r)]
    print(summary(rows))
    print(f"\n{len(specs)} runs trained unattached in {time.perf_counter() - t0:.0f} s "
          f"({args.jobs} processes); onset = full-data loss > 2× its 50-step minimum; rules as in "
          "server/rules/default.yaml")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
