"""Scoring alerts against loss spikes: which firing leads which onset, and how each page grades.

An alert *leads* an onset when it fired at least one step before it, after the previous onset,
and either within `horizon` (100) steps of it or still firing at it; a rule's lead counts from its
latest such firing, and a run's page lead is the longest over its page rules. Each page is graded
by the largest rise (`server.spikes.rise`) that follows it within `horizon` steps: ≥ 2 a true
page, 1.5–2 a minor bump, < 1.5 a false page.

The functions are pure (lists in, dataclasses out) and need no database.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from spikewatch.server.rules import Rule
from spikewatch.server.spikes import FACTOR, HORIZON, max_rise_after, spike_onsets
from spikewatch.server.types import AlertState, Severity, Transition

MINOR = 1.5


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


def score(run: str, rules: Sequence[Rule], transitions: Sequence[Transition],
          loss: Sequence[tuple[int, float]], *, horizon: int = HORIZON) -> Report:
    """Score a run's alerts (its transition log) against the spikes of its loss series."""
    return score_episodes(run, rules, episodes(transitions), loss, horizon=horizon)


def score_episodes(run: str, rules: Sequence[Rule], eps: Sequence[Episode],
                   loss: Sequence[tuple[int, float]], *, horizon: int = HORIZON) -> Report:
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
