"""Backtest: replay a stored run through a rule file and score its alerts against the loss spikes.

The ground truth is `server.spikes` (one definition of an onset and a rise), the scoring is
`server.scoring` (leads and page grades); both are re-exported here. This module reads a stored
run, replays it through a fresh rule engine and prints the score (`spikewatch backtest`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

from spikewatch.server._cli_options import add_source_options
from spikewatch.server._cli_progress import track
from spikewatch.server.rules import Rule, RuleEngine, RuleError, load_rules
from spikewatch.server.rules._conditions import EventLike
from spikewatch.server.scoring import (
    MINOR,
    Episode,
    Report,
    RuleScore,
    episodes,
    grade,
    lead,
    score,
    score_episodes,
)
from spikewatch.server.spikes import (
    FACTOR,
    HORIZON,
    QUIET,
    WINDOW,
    max_rise_after,
    rise,
    spike_onsets,
)
from spikewatch.server.types import Observation, Transition

if TYPE_CHECKING:
    from spikewatch.server.store.reads import StoreReads
    from spikewatch.server.store.rows import EventRow, Point

__all__ = ["FACTOR", "HORIZON", "MINOR", "QUIET", "WINDOW", "Episode", "Report", "RuleScore",
           "backtest", "episodes", "format_report", "grade", "lead", "load_run", "main",
           "max_rise_after", "register", "replay", "rise", "score", "score_episodes",
           "spike_onsets"]


def replay(
    rules: Sequence[Rule], observations: Iterable[tuple[Observation, Sequence[EventLike]]]
) -> list[Transition]:
    """Run observations (in step order) through a fresh engine; the transition log."""
    engine = RuleEngine(rules, idle_seconds=math.inf)
    out: list[Transition] = []
    for obs, events in observations:
        out += engine.observe(obs, events)
    return out


# --- reading a stored run ----------------------------------------------------------------------

PAGE = 100_000
_Row = TypeVar("_Row", "Point", "EventRow")


def _read_all(read_page: Callable[[int | None], list[_Row]]) -> list[_Row]:
    """Every row of a paged read: `read_page(step_min)` returns up to `PAGE` rows from step_min."""
    out: list[_Row] = []
    step_min: int | None = None
    while True:
        chunk = read_page(step_min)
        out += chunk
        if len(chunk) < PAGE:
            return out
        step_min = chunk[-1].step + 1


def _series(src: StoreReads, run: str, metric: str) -> list[Point]:
    return _read_all(lambda s: src.series(run, metric, step_min=s, limit=PAGE))


def load_run(
    src: StoreReads, run: str, metrics: Iterable[str], *, truth: str = "loss"
) -> tuple[list[tuple[Observation, list[EventLike]]], list[tuple[int, float]]]:
    """A stored run as observations (one per step, the given metrics) and its ground-truth
    series (`truth`: the loss, or e.g. the `eval_loss` of a minibatch job)."""
    values: dict[int, dict[str, float]] = defaultdict(dict)
    times: dict[int, float] = {}
    loss: list[tuple[int, float]] = []
    for metric in sorted(set(metrics) | {"loss", truth}):
        for p in _series(src, run, metric):
            values[p.step][metric] = p.value
            times.setdefault(p.step, p.time)
            if metric == truth:
                loss.append((p.step, p.value))
    events: dict[int, list[EventLike]] = defaultdict(list)
    for e in _read_all(lambda s: src.events(run, step_min=s, limit=PAGE)):
        events[e.step].append(e)
        times.setdefault(e.step, e.time)
    obs = [
        (Observation(run, s, times[s], values.get(s, {}), tuple(e.type for e in events[s])),
         events[s])
        for s in sorted(times)
    ]  # fmt: skip
    return obs, loss


def backtest(src: StoreReads, run: str, rules: Sequence[Rule], *, truth: str = "loss",
             progress: bool = False) -> Report:
    """Replay a stored run through `rules` and score it against the spikes of its `truth`
    series (`progress`: a bar on stderr while replaying, when stderr is a terminal)."""
    obs, loss = load_run(src, run, {m for r in rules for m in r.metrics()}, truth=truth)
    steps = track(obs, f"replaying {run}", enabled=progress)
    return score(run, rules, replay(rules, steps), loss)


# --- printing and the CLI ----------------------------------------------------------------------


def _fmt_value(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def format_report(rep: Report, truth: str = "loss") -> str:
    """A readable per-rule table and a summary (`truth`: the series the spikes were read on)."""
    lines = [f"run {rep.run}: {rep.steps} {truth} points, {len(rep.onsets)} {truth} spike onset(s)"
             + (f" at step {', '.join(map(str, rep.onsets))}" if rep.onsets else "")]  # fmt: skip
    name_w = max([len("rule"), *(len(s.rule) for s in rep.rules)])
    lines.append(f"{'rule':<{name_w}}  {'severity':<8}  {'alerts':>6}  {'led':>5}  "
                 f"{'true/minor/false':>16}  leads before onsets (steps)")  # fmt: skip
    for s in rep.rules:
        led = sum(1 for x in s.leads if x is not None)
        tmf = f"{s.grades.count('true')}/{s.grades.count('minor')}/{s.grades.count('false')}"
        leads = " ".join(f"{o}:{'+' + str(x) if x is not None else '-'}"
                         for o, x in zip(rep.onsets, s.leads, strict=True))  # fmt: skip
        lines.append(f"{s.rule:<{name_w}}  {s.severity.value:<8}  {len(s.alerts):>6}  "
                     f"{led:>2}/{len(rep.onsets):<2}  {tmf:>16}  {leads or '-'}")  # fmt: skip
    lines.append("")
    lines.append("alerts (fired step → resolved step, value, what followed):")
    for s in rep.rules:
        for e, g in zip(s.alerts, s.grades, strict=True):
            end = e.resolved_step if e.resolved_step is not None else "still firing"
            lines.append(f"  {s.rule} [{e.severity.value}] {e.fired_step} → {end}, "
                         f"value {_fmt_value(e.value)}, {g}")  # fmt: skip
    recall = "n/a (no onsets)" if rep.recall is None else (
        f"{len(rep.page_leads)}/{len(rep.onsets)} ({100 * rep.recall:.0f} %)")
    med = "n/a" if rep.median_lead is None else f"{rep.median_lead:g} steps"
    lines.append("")
    lines.append(f"summary: page recall {recall}, median page lead {med}, "
                 f"false pages {rep.false_pages}, minor-bump pages {rep.minor_pages}, "
                 f"true pages {rep.true_pages}, warnings {rep.warnings}")  # fmt: skip
    lines += [f"note: {n}" for n in rep.notes]
    return "\n".join(lines)


def report_json(rep: Report) -> str:
    """The report as JSON: its fields and `median_lead`; non-finite floats as the API writes
    them ("NaN", "Infinity", "-Infinity")."""
    from spikewatch.server.api._json import jsonable

    return json.dumps(jsonable({**asdict(rep), "median_lead": rep.median_lead}), indent=2)


def register(subparsers: Any) -> None:
    """Add `spikewatch backtest --rules FILE --run NAME [--db URL] [--json]`."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "backtest", help="replay a stored run through rules and score the alerts",
        description="Replay a stored run through a rule file and print, per rule, the alerts "
        "it would have raised and their lead before each loss spike onset of that run.",
    )  # fmt: skip
    p.add_argument("--rules", default=None, metavar="FILE",
                   help="rule file (YAML); default: the built-in rule pack")  # fmt: skip
    p.add_argument("--run", required=True, metavar="NAME", help="the stored run to replay")
    p.add_argument("--truth", default="loss", metavar="METRIC",
                   help="the series whose spikes are the ground truth (default: loss; e.g. "
                   "eval_loss for a minibatch job that logs a clean loss)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_source_options(p, main, default="db", http=False)


def main(args: argparse.Namespace) -> int:
    """Run the backtest subcommand; 0 on success, 2 on bad input."""
    try:
        rules = load_rules(args.rules)
    except RuleError as e:
        print(f"spikewatch backtest: {e}", file=sys.stderr)
        return 2
    from spikewatch.server.store import Store

    store = Store(args.db)
    try:
        if store.get_run(args.run) is None:
            print(f"spikewatch backtest: no run named {args.run!r} in {args.db}", file=sys.stderr)
            return 2
        rep = backtest(store, args.run, rules, truth=args.truth, progress=not args.json)
        if not rep.steps and args.truth != "loss":
            print(f"spikewatch backtest: run {args.run!r} has no {args.truth!r} series",
                  file=sys.stderr)
            return 2
        print(report_json(rep) if args.json else format_report(rep, args.truth))
    finally:
        store.close()
    return 0
