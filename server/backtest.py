"""Backtest: replay a stored run through a rule file and score its alerts against the loss spikes.

Ground truth (DESIGN.md, issue 8): a loss spike onset is the first step t with
loss[t] > 2 × min(loss[t−50 .. t−1]) (a non-finite loss counts as a spike; the series' first 50
steps are skipped), and episodes are separated by 50 quiet steps. An alert *leads* an onset when
it fired at least one step before it, after the previous onset, and either within `horizon` (100)
steps of it or still firing at it; a rule's lead counts from its latest such firing, and a run's
page lead is the longest over its page rules. Each page is graded by the largest rise that follows
it within `horizon` steps, the rise at step s being loss[s] / min(loss[s−50 .. s−1]): ≥ 2 a true
page, 1.5–2 a minor bump, < 1.5 a false page.

The scoring functions are pure (lists in, dataclasses out) and need no database.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from spikewatch.server._cli_options import add_source_options
from spikewatch.server.rules import Rule, RuleEngine, RuleError, load_rules
from spikewatch.server.rules._conditions import EventLike
from spikewatch.server.types import AlertState, Observation, Severity, Transition

WINDOW = 50
FACTOR = 2.0
QUIET = 50
HORIZON = 100
MINOR = 1.5


def _prior_min(points: Sequence[tuple[int, float]], i: int, window: int) -> float | None:
    """Min of the finite values at steps [step_i − window, step_i − 1]."""
    step = points[i][0]
    vals = []
    j = i - 1
    while j >= 0 and points[j][0] >= step - window:
        if math.isfinite(points[j][1]):
            vals.append(points[j][1])
        j -= 1
    return min(vals) if vals else None


def rise(points: Sequence[tuple[int, float]], i: int, window: int = WINDOW) -> float:
    """loss[i] / min of the previous `window` steps (inf for a non-finite loss, 0 if undefined)."""
    if not math.isfinite(points[i][1]):
        return math.inf
    m = _prior_min(points, i, window)
    if m is None or m <= 0:
        return 0.0
    return points[i][1] / m


def spike_onsets(
    points: Sequence[tuple[int, float]], *, window: int = WINDOW, factor: float = FACTOR,
    quiet: int = QUIET,
) -> list[int]:  # fmt: skip
    """Steps where a loss spike episode starts; `points` are (step, loss) in step order.

    The first `window` steps of the series are skipped (their window is incomplete). This is
    the one ground-truth definition (DESIGN.md §7): benchmarks, tests and the demo use it.
    """
    onsets: list[int] = []
    last_spiking: int | None = None
    for i, (step, _) in enumerate(points):
        if step - points[0][0] < window:
            continue
        if rise(points, i, window) > factor:
            if last_spiking is None or step - last_spiking > quiet:
                onsets.append(step)
            last_spiking = step
    return onsets


def max_rise_after(
    points: Sequence[tuple[int, float]], step: int, *, horizon: int = HORIZON,
    window: int = WINDOW,
) -> float:  # fmt: skip
    """The largest rise at any step in [step, step + horizon]."""
    return max(
        (rise(points, i, window) for i, (s, _) in enumerate(points) if step <= s <= step + horizon),
        default=0.0,
    )


@dataclass(frozen=True, slots=True)
class Episode:
    """One firing of a rule: when it went pending, fired and resolved (None: still firing)."""

    rule: str
    severity: Severity
    first_step: int
    fired_step: int
    resolved_step: int | None
    value: float


def episodes(transitions: Iterable[Transition]) -> list[Episode]:
    """The firing episodes in a transition log (pending that never fired is dropped)."""
    pending: dict[tuple[str, str], int] = {}
    open_: dict[tuple[str, str], Episode] = {}
    out: list[Episode] = []
    for t in transitions:
        key = (t.run, t.rule)
        if t.state is AlertState.PENDING:
            pending[key] = t.step
        elif t.state is AlertState.FIRING:
            ep = Episode(t.rule, t.severity, pending.pop(key, t.step), t.step, None, t.value)
            open_[key] = ep
            out.append(ep)
        elif t.state is AlertState.RESOLVED and key in open_:
            ep = open_.pop(key)
            out[out.index(ep)] = Episode(ep.rule, ep.severity, ep.first_step, ep.fired_step,
                                         t.step, ep.value)  # fmt: skip
        else:
            pending.pop(key, None)
    return out


def lead(eps: Sequence[Episode], onset: int, previous_onset: int | None,
         horizon: int = HORIZON) -> int | None:  # fmt: skip
    """Steps between the onset and the latest episode that leads it (None: none leads).

    The latest, not the earliest: an alert that fired and resolved long before is not credited
    with the lead of a later one (conservative when an alert flaps)."""
    leading = [
        e.fired_step for e in eps
        if e.fired_step < onset
        and (previous_onset is None or e.fired_step > previous_onset)
        and (e.fired_step >= onset - horizon or e.resolved_step is None
             or e.resolved_step >= onset)
    ]  # fmt: skip
    return onset - max(leading) if leading else None


def grade(rise_ratio: float) -> str:
    """true (≥ 2×), minor (1.5–2×) or false (< 1.5×)."""
    return "true" if rise_ratio >= FACTOR else "minor" if rise_ratio >= MINOR else "false"


@dataclass(frozen=True, slots=True)
class RuleScore:
    rule: str
    severity: Severity
    alerts: list[Episode]
    grades: list[str]  # per alert: true | minor | false
    leads: list[int | None]  # per onset


@dataclass(frozen=True, slots=True)
class Report:
    run: str
    steps: int
    onsets: list[int]
    rules: list[RuleScore]
    recall: float | None  # onsets led by a page; None without onsets
    page_leads: list[int]  # per led onset, the earliest page's lead
    false_pages: int
    minor_pages: int
    true_pages: int
    warnings: int
    notes: list[str] = field(default_factory=list)

    @property
    def median_lead(self) -> float | None:
        return statistics.median(self.page_leads) if self.page_leads else None


def score(
    run: str,
    rules: Sequence[Rule],
    transitions: Sequence[Transition],
    loss: Sequence[tuple[int, float]],
    *,
    horizon: int = HORIZON,
) -> Report:
    """Score a run's alerts (its transition log) against the spikes of its loss series."""
    return score_episodes(run, rules, episodes(transitions), loss, horizon=horizon)


def score_episodes(
    run: str,
    rules: Sequence[Rule],
    eps: Sequence[Episode],
    loss: Sequence[tuple[int, float]],
    *,
    horizon: int = HORIZON,
) -> Report:
    """Score firing episodes (e.g. alerts read back from a server's API) against the loss spikes."""
    onsets = spike_onsets(loss)
    by_rule: dict[str, list[Episode]] = defaultdict(list)
    for e in eps:
        by_rule[e.rule].append(e)
    scores = []
    for r in rules:
        mine = by_rule.get(r.name, [])
        scores.append(RuleScore(
            rule=r.name, severity=r.severity, alerts=mine,
            grades=[grade(max_rise_after(loss, e.fired_step, horizon=horizon)) for e in mine],
            leads=[lead(mine, o, onsets[k - 1] if k else None, horizon)
                   for k, o in enumerate(onsets)],
        ))  # fmt: skip
    pages = [e for e in eps if e.severity is Severity.PAGE]
    # per onset, the longest lead of any page rule (each rule counted from its latest firing)
    page_leads = [
        max(leads)
        for k in range(len(onsets))
        if (leads := [x for s in scores if s.severity is Severity.PAGE
                      if (x := s.leads[k]) is not None])
    ]  # fmt: skip
    page_grades = [g for s in scores if s.severity is Severity.PAGE for g in s.grades]
    notes = []
    last = loss[-1][0] if loss else 0
    if any(e.fired_step > last - horizon for e in pages):
        notes.append(f"pages within the last {horizon} steps are graded on a partial horizon")
    if not loss:
        notes.append("the run has no loss series: no spike onsets, every page grades false")
    return Report(
        run=run, steps=len(loss), onsets=onsets, rules=scores,
        recall=len(page_leads) / len(onsets) if onsets else None, page_leads=page_leads,
        false_pages=page_grades.count("false"), minor_pages=page_grades.count("minor"),
        true_pages=page_grades.count("true"),
        warnings=sum(1 for e in eps if e.severity is Severity.WARNING), notes=notes,
    )  # fmt: skip


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


class _PointLike(Protocol):
    @property
    def step(self) -> int: ...
    @property
    def time(self) -> float: ...
    @property
    def value(self) -> float: ...


class _EventRowLike(EventLike, Protocol):
    @property
    def step(self) -> int: ...
    @property
    def time(self) -> float: ...


class Source(Protocol):
    """The part of `server.store.Store` the backtest reads."""

    def series(self, run: str, metric: str, *, step_min: int | None = ...,
               limit: int = ...) -> Sequence[_PointLike]: ...  # fmt: skip

    def events(self, run: str, *, step_min: int | None = ...,
               limit: int = ...) -> Sequence[_EventRowLike]: ...  # fmt: skip


PAGE = 100_000


def _all_series(src: Source, run: str, metric: str) -> list[_PointLike]:
    out: list[_PointLike] = []
    step_min: int | None = None
    while True:
        chunk = src.series(run, metric, step_min=step_min, limit=PAGE)
        out += chunk
        if len(chunk) < PAGE:
            return out
        step_min = chunk[-1].step + 1


def _all_events(src: Source, run: str) -> list[_EventRowLike]:
    out: list[_EventRowLike] = []
    step_min: int | None = None
    while True:
        chunk = src.events(run, step_min=step_min, limit=PAGE)
        out += chunk
        if len(chunk) < PAGE:
            return out
        step_min = chunk[-1].step + 1


def load_run(
    src: Source, run: str, metrics: Iterable[str]
) -> tuple[list[tuple[Observation, list[EventLike]]], list[tuple[int, float]]]:
    """A stored run as observations (one per step, the given metrics) and its loss series."""
    values: dict[int, dict[str, float]] = defaultdict(dict)
    times: dict[int, float] = {}
    loss: list[tuple[int, float]] = []
    for metric in sorted(set(metrics) | {"loss"}):
        for p in _all_series(src, run, metric):
            values[p.step][metric] = p.value
            times.setdefault(p.step, p.time)
            if metric == "loss":
                loss.append((p.step, p.value))
    events: dict[int, list[EventLike]] = defaultdict(list)
    for e in _all_events(src, run):
        events[e.step].append(e)
        times.setdefault(e.step, e.time)
    obs = [
        (Observation(run, s, times[s], values.get(s, {}), tuple(e.type for e in events[s])),
         events[s])
        for s in sorted(times)
    ]  # fmt: skip
    return obs, loss


def backtest(src: Source, run: str, rules: Sequence[Rule]) -> Report:
    """Replay a stored run through `rules` and score it."""
    obs, loss = load_run(src, run, {m for r in rules for m in r.metrics()})
    return score(run, rules, replay(rules, obs), loss)


# --- printing and the CLI ----------------------------------------------------------------------


def _fmt_value(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def format_report(rep: Report) -> str:
    """A readable per-rule table and a summary."""
    lines = [f"run {rep.run}: {rep.steps} loss points, {len(rep.onsets)} loss spike onset(s)"
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
        rep = backtest(store, args.run, rules)
        print(report_json(rep) if args.json else format_report(rep))
    finally:
        store.close()
    return 0
