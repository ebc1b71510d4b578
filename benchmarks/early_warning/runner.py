"""Run the early-warning benchmark: train each scenario with the agent attached to a real
spikewatch server and, interleaved with it, the identical run without the agent; read the alerts
back through the server's HTTP API and score them.

    python -m benchmarks.early_warning.runner [--quick] [--configs default,closure-exact-full-inf]

(from a source checkout: the benchmarks are not part of the installed package)

What is measured. By default the agent is attached exactly as a user would attach it,
`spikewatch.attach(model, optimizer, run=..., endpoint=...)`: no closure, the library's profile,
overhead budget and curvature estimator. Other configurations are opt-in (`--configs`, or
`--closure/--profile/--budget`, see `_configs.py`) and every table and summary line names the
configuration it was measured with.

Overhead. Each scenario is built twice from its seed; the two arms train the same steps in
interleaved chunks (ABBA order), so a load change on a shared machine hits both. The step-time
ratio attached/unattached is reported per run as the median over chunks with its interquartile
range, and in total. Only forward/backward/optimizer step/`log` are timed (not batch selection, not
the ground-truth evaluation). The agent only reads, so the two arms' loss series must be bit for bit
identical; a mismatch is printed loudly and makes the command exit 1. Caveat: the agent measures
the step time as the wall time between optimizer steps, so the pause while the other arm trains
inflates one of its measurement windows per chunk (it may relax its cadences there); chunks are
long (≥ 25 steps) to keep that rare.

Scoring is `server.backtest` (ground truth, page leads, true/minor/false grading) on the series the
server stored: the loss, or for minibatch scenarios the full-data/held-out `eval_loss` the loop
logs next to it (`mon.log(loss, eval_loss=...)`). The onsets found in the server's series are
checked against those of the unattached arm.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from rich.console import Console

from benchmarks.early_warning._configs import PRESETS, Config, from_options, parse
from benchmarks.early_warning._train import Trained, train_pair
from spikewatch.protocol.names import AGENT_OVERHEAD, AGENT_PREDICTION_CADENCE
from spikewatch.server._cli_progress import track
from spikewatch.server.backtest import Episode, Report, score_episodes
from spikewatch.server.process import ServerProcess
from spikewatch.server.rules import load_rules
from spikewatch.server.types import Severity

if TYPE_CHECKING:  # the scenarios import torch; the runner imports it only to train
    from benchmarks.early_warning.scenarios import Scenario

__all__ = ["Config", "Row", "main", "parse", "run_suite", "summary", "table"]

INGEST_TIMEOUT = 120.0


def server(workdir: Path, rules: Path | None = None) -> ServerProcess:
    """`spikewatch serve` on free ports with SQLite in `workdir` (use it in a `with`: started,
    ready, stopped after)."""
    return ServerProcess(f"sqlite:///{workdir / 'bench.db'}", workdir, rules=rules)


def _float(x: float | str) -> float:
    return float(x) if not isinstance(x, str) else float(x.replace("Infinity", "inf"))


def collect(client: httpx.Client, run: str, last_step: int, metric: str = "loss",
            ) -> tuple[list[Episode], list[tuple[int, float]]]:  # fmt: skip
    """Wait until the server stored the run up to `last_step`; its alert episodes and the
    `metric` series (the ground truth)."""
    deadline = time.monotonic() + INGEST_TIMEOUT
    while True:
        r = client.get(f"/runs/{run}")
        if r.status_code == 200 and (r.json().get("last_step") or -1) >= last_step:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run}: server did not store step {last_step} in time")
        time.sleep(0.2)
    alerts = client.get(f"/runs/{run}/alerts").json()
    eps = [Episode(a["rule"], Severity(a["severity"]), a["first_step"], a["fired_step"],
                   a["resolved_step"], _float(a["value"]))
           for a in sorted(alerts, key=lambda a: (a["fired_step"] or -1))
           if a["fired_step"] is not None]  # fmt: skip
    pts = client.get(f"/runs/{run}/series", params={"metric": metric, "limit": 10000}).json()
    if pts["truncated"]:
        raise ValueError(f"run {run}: more than 10000 {metric} points; shorten the scenario")
    series = [(p["step"], _float(p["value"])) for p in pts["points"]]
    return eps, series


def agent_cost(client: httpx.Client, run: str) -> tuple[float, float]:
    """From the agent's own reports stored for `run`: the mean overhead it measured (share of
    step time) and the share of reports in which the predictor ran every step."""
    def values(metric: str) -> list[float]:
        pts = client.get(f"/runs/{run}/series", params={"metric": metric, "limit": 10000})
        if pts.status_code != 200:
            return []
        return [v for p in pts.json()["points"] if math.isfinite(v := _float(p["value"]))]

    own, cadence = values(AGENT_OVERHEAD), values(AGENT_PREDICTION_CADENCE)
    return (statistics.mean(own) if own else math.nan,
            sum(c == 1 for c in cadence) / len(cadence) if cadence else math.nan)


@dataclass(frozen=True)
class Row:
    """One scored (scenario, config) run."""

    scenario: str
    family: str
    control: bool
    config: str  # the config's name
    config_label: str  # ... and what it means
    truth: str  # ground-truth metric: loss | eval_loss
    steps: int
    onsets: list[int]
    page_leads: list[int]
    true_pages: int
    minor_pages: int
    false_pages: int
    warnings: int
    pages: list[tuple[str, int]]  # (rule, fired step)
    seconds: float  # wall seconds of both arms
    attached_s: float  # timed step seconds with the agent
    unattached_s: float  # ... without
    ratio: float  # median over chunks of attached/unattached step time
    ratio_q1: float
    ratio_q3: float
    chunk_ratios: list[float] = field(repr=False)
    identical: bool = True  # the two arms' series are bit for bit identical
    notes: list[str] = field(default_factory=list)
    pace: float = 0.0  # seconds a step was paced to (0: not paced)
    agent_overhead: float = math.nan  # mean of the agent's own streamed overhead (its clock)
    predictor_held: float = math.nan  # share of the agent's reports with the predictor every step

    @property
    def recall(self) -> str:
        return f"{len(self.page_leads)}/{len(self.onsets)}" if self.onsets else "-"


def _quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    if not xs:
        return math.nan, math.nan, math.nan
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def row(scenario: Scenario, config: Config, rep: Report, eps: Sequence[Episode],
        tr: Trained, pace: float = 0.0,
        cost: tuple[float, float] = (math.nan, math.nan)) -> Row:  # fmt: skip
    """Scores and timings of one run as a table row."""
    q1, med, q3 = _quartiles(tr.chunk_ratios)
    notes = []
    if tr.mismatch:
        notes.append(f"TRAJECTORY MISMATCH with the agent attached: {tr.mismatch}")
    if tr.onsets != rep.onsets:
        notes.append(f"onsets in the server's {tr.truth} {rep.onsets} != unattached {tr.onsets}")
    label = config.describe() + (f"; steps paced to {pace * 1e3:g} ms" if pace > 0 else "")
    return Row(scenario.name, scenario.family, scenario.control, config.name, label,
               tr.truth, scenario.steps, rep.onsets, rep.page_leads, rep.true_pages,
               rep.minor_pages, rep.false_pages, rep.warnings,
               [(e.rule, e.fired_step) for e in eps if e.severity is Severity.PAGE],
               round(tr.wall, 1), round(tr.attached, 3), round(tr.unattached, 3),
               round(med, 4), round(q1, 4), round(q3, 4),
               [round(r, 4) for r in tr.chunk_ratios], tr.mismatch is None, notes,
               pace, *cost)  # fmt: skip


def _dist(xs: Sequence[int]) -> str:
    if not xs:
        return "-"
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return f"min {min(xs)} / p25 {q[0]:g} / median {q[1]:g} / p75 {q[2]:g} / max {max(xs)}"


def overhead(rows: Sequence[Row]) -> str:
    """Total step-time ratio attached/unattached and the pooled chunk median with its IQR."""
    off = sum(r.unattached_s for r in rows)
    total = sum(r.attached_s for r in rows) / off if off > 0 else math.nan
    q1, med, q3 = _quartiles([x for r in rows for x in r.chunk_ratios])
    out = (f"step time attached/unattached {total:.3f} (chunks: median {med:.3f}, "
           f"IQR {q1:.3f}-{q3:.3f})")
    own = [r.agent_overhead for r in rows if math.isfinite(r.agent_overhead)]
    if own:  # what the agent's clock says it took of the step time it saw (paced or not)
        out += (f", agent's own overhead {100 * statistics.mean(own):.2f} % of step time (runs "
                f"{100 * min(own):.2f}-{100 * max(own):.2f} %)")
    held = [r.predictor_held for r in rows if math.isfinite(r.predictor_held)]
    if held:
        out += f", predictor every step in {100 * statistics.mean(held):.0f} % of reports"
    return out


def summary(rows: Sequence[Row], title: str) -> str:
    """Totals: recall, lead distribution, false/minor pages (all and on controls), warnings,
    overhead; the line names the configuration(s) the rows were measured with."""
    onsets = sum(len(r.onsets) for r in rows)
    leads = [x for r in rows for x in r.page_leads]
    recall = f"{len(leads)}/{onsets} ({100 * len(leads) / onsets:.0f} %)" if onsets else "n/a"
    med = f"{statistics.median(leads):g}" if leads else "n/a"
    ctl = [r for r in rows if r.control]
    labels = "; ".join(dict.fromkeys(r.config_label for r in rows))
    bad = sum(not r.identical for r in rows)
    return (f"{title}: runs {len(rows)}, onsets {onsets}, recall {recall}, median lead {med} "
            f"steps (lead {_dist(leads)}), true pages {sum(r.true_pages for r in rows)}, "
            f"minor-bump pages {sum(r.minor_pages for r in rows)}, false pages "
            f"{sum(r.false_pages for r in rows)} (on controls {sum(r.false_pages for r in ctl)}"
            f", pages on controls {sum(len(r.pages) for r in ctl)}), warnings "
            f"{sum(r.warnings for r in rows)}, {overhead(rows)}"
            + (f", TRAJECTORY MISMATCHES {bad}" if bad else "")
            + f" [config: {labels}]")  # fmt: skip


def table(rows: Sequence[Row]) -> str:
    """Per config: a header naming it, one line per run, totals per family and overall."""
    w = max([8, *(len(r.scenario) for r in rows)])
    out: list[str] = []
    for cfg in dict.fromkeys(r.config for r in rows):
        mine = [r for r in rows if r.config == cfg]
        out.append(f"== config {cfg}: {mine[0].config_label} ==")
        out.append(f"{'scenario':<{w}}  {'config':<{len(cfg)}}  {'ctl':<3}  {'truth':<9}  "
                   f"{'onsets':<20}  {'recall':>6}  {'leads':<16}  {'T/m/F pages':>11}  "
                   f"{'warn':>4}  {'step ratio [IQR]':<22}  {'s':>6}")  # fmt: skip
        for r in mine:
            tmf = f"{r.true_pages}/{r.minor_pages}/{r.false_pages}"
            ratio = f"{r.ratio:.3f} [{r.ratio_q1:.3f}-{r.ratio_q3:.3f}]"
            flag = "" if r.identical else "  !! TRAJECTORY MISMATCH"
            out.append(f"{r.scenario:<{w}}  {r.config:<{len(cfg)}}  "
                       f"{'yes' if r.control else 'no':<3}  {r.truth:<9}  "
                       f"{','.join(map(str, r.onsets)) or '-':<20}  {r.recall:>6}  "
                       f"{','.join(map(str, r.page_leads)) or '-':<16}  {tmf:>11}  "
                       f"{r.warnings:>4}  {ratio:<22}  {r.seconds:>6.1f}{flag}")  # fmt: skip
            out.extend(f"    note: {n}" for n in r.notes)
        out.append("")
        for fam in dict.fromkeys(r.family for r in mine):
            out.append(summary([r for r in mine if r.family == fam], f"[{cfg}] {fam}"))
        out.append(summary(mine, f"[{cfg}] ALL"))
        out.append("")
    return "\n".join(out).rstrip()


def configs(names: Sequence[str | Config]) -> list[Config]:
    """Configs from names (or configs), duplicates dropped, order kept; KeyError for a bad name."""
    out = [n if isinstance(n, Config) else parse(n) for n in names]
    return list(dict.fromkeys(out))


def run_suite(scenarios: Sequence[Scenario], configs_: Sequence[str | Config] = ("default",), *,
              rules: Path | None = None, workdir: Path, echo: bool = True,
              chunk: int | None = None, pace: float = 0.0, jobs: int = 1,
              threads: int = 1) -> list[Row]:  # fmt: skip
    """Train and score every (scenario, config) against one server; `jobs` trainings at once
    (worker processes: paced arms mostly wait, so they share the CPUs)."""
    pack = load_rules(rules)
    rows: list[Row] = []
    work = [(sc, cfg) for cfg in configs(configs_) for sc in scenarios]
    with server(workdir, rules) as srv, _pool(jobs) as pool, \
            httpx.Client(base_url=srv.api_url, timeout=30.0) as client:  # fmt: skip
        args = [(sc.name, cfg, srv.zmq, f"{sc.name}.{cfg.name}", chunk, pace, threads)
                for sc, cfg in work]
        results = (pool.map(train_pair, *zip(*args, strict=True)) if pool is not None
                   else (train_pair(*a) for a in args))
        err = Console(stderr=True, soft_wrap=True, highlight=False)
        for (sc, cfg), tr in track(zip(work, results, strict=True), "training", total=len(work),
                                   console=err):
            run = f"{sc.name}.{cfg.name}"
            eps, truth = collect(client, run, sc.steps - 1, tr.truth)
            rows.append(row(sc, cfg, score_episodes(run, pack, eps, truth), eps, tr, pace,
                            agent_cost(client, run)))
            r = rows[-1]
            for n in r.notes:
                err.print(f"!! {run}: {n}", markup=False)
            if echo:
                err.print(f"  {run}: {tr.wall:.1f} s, onsets {r.onsets}, leads {r.page_leads}, "
                      f"pages {r.pages}, warnings {r.warnings}, step ratio {r.ratio:.3f} "
                      f"[{r.ratio_q1:.3f}-{r.ratio_q3:.3f}]"
                      + f", agent's own overhead {100 * r.agent_overhead:.2f} %, predictor "
                      f"every step in {100 * r.predictor_held:.0f} % of reports"
                      + f" (config: {r.config_label})", markup=False)  # fmt: skip
    return rows


@contextmanager
def _pool(jobs: int) -> Iterator[ProcessPoolExecutor | None]:
    if jobs <= 1:
        yield None
        return
    ctx = multiprocessing.get_context("spawn")  # no forked torch or ZeroMQ state
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        yield pool


def parser() -> argparse.ArgumentParser:
    """The runner's command line."""
    from benchmarks.early_warning._options import add_options

    p = argparse.ArgumentParser(prog="python -m benchmarks.early_warning.runner",
                                description="Run the early-warning benchmark.")
    add_options(p)
    return p


def selected_configs(args: argparse.Namespace) -> list[Config]:
    """--configs plus the one --closure/--profile/--budget describe; only `default` if neither."""
    names: list[str | Config] = [n for n in (args.configs or "").split(",") if n.strip()]
    extra = from_options(args.closure, args.profile, args.budget)
    if extra is not None:
        names.append(extra)
    return configs(names or ["default"])


def main(args: argparse.Namespace) -> int:
    """Run the benchmark with parsed options; 0 on success, 1 if the agent changed a trajectory,
    2 on bad options."""
    import torch

    from benchmarks.early_warning.scenarios import QUICK, SCENARIOS, by_name

    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:<36} {s.family:<14} {'control' if s.control else 'spiking':<8} "
                  f"{s.steps:>5} steps{'  (ground truth: eval_loss)' if s.minibatch else ''}")
        print("\nconfigs: " + ", ".join(f"{n} ({parse(n).describe()})" for n in PRESETS))
        return 0
    try:
        cfgs = selected_configs(args)
        names = (args.scenarios.split(",") if args.scenarios else
                 list(QUICK) if args.quick else [s.name for s in SCENARIOS])  # fmt: skip
        scenarios = by_name(names)
    except KeyError as e:
        print(f"early-warning: {e.args[0]}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        rows = run_suite(scenarios, cfgs, rules=args.rules, workdir=args.keep, chunk=args.chunk,
                         pace=args.pace_ms / 1e3, jobs=args.jobs, threads=args.threads)
    else:
        with tempfile.TemporaryDirectory(prefix="spikewatch-bench-") as d:
            rows = run_suite(scenarios, cfgs, rules=args.rules, workdir=Path(d), chunk=args.chunk,
                             pace=args.pace_ms / 1e3, jobs=args.jobs, threads=args.threads)
    print(table(rows))
    print(f"\n{len(rows)} runs (each trained with and without the agent) in "
          f"{time.perf_counter() - t0:.0f} s, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs; configs: "
          + "; ".join(f"{c.name} = {c.describe()}" for c in cfgs))  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    bad = [r for r in rows if not r.identical]
    if bad:
        print(f"\n!! {len(bad)} run(s) trained differently with the agent attached: "
              + ", ".join(f"{r.scenario}.{r.config}" for r in bad), file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(parser().parse_args()))
