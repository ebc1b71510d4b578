"""Run the early-warning benchmark: train each scenario with the agent attached to a real
spikewatch server, read the alerts back through its HTTP API and score them.

    python -m benchmarks.early_warning.runner [--quick] [--curvature exact,fd,secant] ...
    spikewatch bench early-warning ...      (the same options)

Scoring is `server.backtest` (ground truth, page leads, true/minor/false grading); this module
only trains, collects and aggregates. Prints one row per (scenario, estimator) and totals per
family and overall.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from server.backtest import Episode, Report, score_episodes
from server.rules import load_rules
from server.types import Severity

if TYPE_CHECKING:  # the scenarios import torch; the runner imports it only to train
    from benchmarks.early_warning.scenarios import Scenario

ROOT = Path(__file__).resolve().parents[2]
ESTIMATORS = ("exact", "fd", "secant")  # secant = no closure (zero extra passes)
READY_TIMEOUT = 60.0
INGEST_TIMEOUT = 120.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Server:
    """A running `spikewatch serve` subprocess."""

    endpoint: str
    api: str
    db: str
    proc: subprocess.Popen[bytes]


@contextmanager
def server(workdir: Path, rules: Path | None = None) -> Iterator[Server]:
    """Start `python -m server.cli serve` on free ports with SQLite in `workdir`; stop it after."""
    zmq_port, http_port = _free_port(), _free_port()
    db = f"sqlite:///{workdir / 'bench.db'}"
    cmd = [sys.executable, "-m", "server.cli", "serve", "--db", db,
           "--zmq", f"tcp://127.0.0.1:{zmq_port}", "--http-port", str(http_port)]
    if rules is not None:
        cmd += ["--rules", str(rules)]
    log = (workdir / "server.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    api = f"http://127.0.0.1:{http_port}/api/v1"
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {log.name}")
            try:
                ready = httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=2.0)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready after {READY_TIMEOUT:.0f} s; see {log.name}")
            time.sleep(0.2)
        yield Server(f"tcp://127.0.0.1:{zmq_port}", api, db, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def train(scenario: Scenario, estimator: str, endpoint: str, run: str,
          profile: str = "full") -> float:  # fmt: skip
    """Train one scenario with the agent attached; wall seconds."""
    import agent

    task = scenario.build()
    closure = None if estimator == "secant" else task.closure
    t0 = time.perf_counter()
    mon = agent.attach(task.model, task.optimizer, run=run, endpoint=endpoint, closure=closure,
                       curvature=estimator, profile=profile, overhead_budget=math.inf)
    try:
        for t in range(scenario.steps):
            task.optimizer.zero_grad(set_to_none=True)
            loss = task.closure()
            loss.backward()  # type: ignore[no-untyped-call]
            if task.schedule is not None:
                task.schedule(t, task.optimizer)
            task.optimizer.step()
            mon.log(loss.detach())
    finally:
        mon.close(timeout=30.0)
    return time.perf_counter() - t0


def _float(x: float | str) -> float:
    return float(x) if not isinstance(x, str) else float(x.replace("Infinity", "inf"))


def collect(client: httpx.Client, run: str, last_step: int) -> tuple[list[Episode],
                                                                     list[tuple[int, float]]]:
    """Wait until the server stored the run up to `last_step`; its alert episodes and loss."""
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
    pts = client.get(f"/runs/{run}/series", params={"metric": "loss", "limit": 10000}).json()
    if pts["truncated"]:
        raise ValueError(f"run {run}: more than 10000 loss points; shorten the scenario")
    loss = [(p["step"], _float(p["value"])) for p in pts["points"]]
    return eps, loss


@dataclass(frozen=True)
class Row:
    """One scored (scenario, estimator) run."""

    scenario: str
    family: str
    control: bool
    estimator: str
    steps: int
    onsets: list[int]
    page_leads: list[int]
    true_pages: int
    minor_pages: int
    false_pages: int
    warnings: int
    pages: list[tuple[str, int]]  # (rule, fired step)
    seconds: float

    @property
    def recall(self) -> str:
        return f"{len(self.page_leads)}/{len(self.onsets)}" if self.onsets else "-"


def row(scenario: Scenario, estimator: str, rep: Report, eps: Sequence[Episode],
        secs: float) -> Row:  # fmt: skip
    return Row(scenario.name, scenario.family, scenario.control, estimator, scenario.steps,
               rep.onsets, rep.page_leads, rep.true_pages, rep.minor_pages, rep.false_pages,
               rep.warnings, [(e.rule, e.fired_step) for e in eps if e.severity is Severity.PAGE],
               round(secs, 1))  # fmt: skip


def _dist(xs: Sequence[int]) -> str:
    if not xs:
        return "-"
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return f"min {min(xs)} / p25 {q[0]:g} / median {q[1]:g} / p75 {q[2]:g} / max {max(xs)}"


def summary(rows: Sequence[Row], title: str) -> str:
    """Totals: recall, lead distribution, false/minor pages (all and on controls), warnings."""
    onsets = sum(len(r.onsets) for r in rows)
    leads = [x for r in rows for x in r.page_leads]
    recall = f"{len(leads)}/{onsets} ({100 * len(leads) / onsets:.0f} %)" if onsets else "n/a"
    med = f"{statistics.median(leads):g}" if leads else "n/a"
    ctl = [r for r in rows if r.control]
    return (f"{title}: runs {len(rows)}, onsets {onsets}, recall {recall}, median lead {med} "
            f"steps (lead {_dist(leads)}), true pages {sum(r.true_pages for r in rows)}, "
            f"minor-bump pages {sum(r.minor_pages for r in rows)}, false pages "
            f"{sum(r.false_pages for r in rows)} (on controls {sum(r.false_pages for r in ctl)}"
            f", pages on controls {sum(len(r.pages) for r in ctl)}), warnings "
            f"{sum(r.warnings for r in rows)}")  # fmt: skip


def table(rows: Sequence[Row]) -> str:
    """Per-run table, then totals per estimator, per family (per estimator) and overall."""
    w = max([8, *(len(r.scenario) for r in rows)])
    out = [f"{'scenario':<{w}}  {'estimator':<9}  {'ctl':<3}  {'onsets':<16}  {'recall':>6}  "
           f"{'leads':<16}  {'T/m/F pages':>11}  {'warn':>4}  {'s':>6}"]  # fmt: skip
    for r in rows:
        tmf = f"{r.true_pages}/{r.minor_pages}/{r.false_pages}"
        out.append(f"{r.scenario:<{w}}  {r.estimator:<9}  {'yes' if r.control else 'no':<3}  "
                   f"{','.join(map(str, r.onsets)) or '-':<16}  {r.recall:>6}  "
                   f"{','.join(map(str, r.page_leads)) or '-':<16}  {tmf:>11}  {r.warnings:>4}  "
                   f"{r.seconds:>6.1f}")  # fmt: skip
    out.append("")
    for est in dict.fromkeys(r.estimator for r in rows):
        mine = [r for r in rows if r.estimator == est]
        for fam in dict.fromkeys(r.family for r in mine):
            out.append(summary([r for r in mine if r.family == fam], f"[{est}] {fam}"))
        out.append(summary(mine, f"[{est}] ALL"))
    return "\n".join(out)


def run_suite(scenarios: Sequence[Scenario], estimators: Sequence[str], *,
              rules: Path | None = None, workdir: Path, profile: str = "full",
              echo: bool = True) -> list[Row]:  # fmt: skip
    """Train and score every (scenario, estimator) against one server."""
    pack = load_rules(rules)
    rows: list[Row] = []
    with server(workdir, rules) as srv, httpx.Client(base_url=srv.api, timeout=30.0) as client:
        for est in estimators:
            for sc in scenarios:
                run = f"{sc.name}.{est}"
                secs = train(sc, est, srv.endpoint, run, profile)
                eps, loss = collect(client, run, sc.steps - 1)
                rows.append(row(sc, est, score_episodes(run, pack, eps, loss), eps, secs))
                if echo:
                    r = rows[-1]
                    print(f"  {run}: {secs:.1f} s, onsets {r.onsets}, leads {r.page_leads}, "
                          f"pages {r.pages}, warnings {r.warnings}", file=sys.stderr, flush=True)
    return rows


def parser() -> argparse.ArgumentParser:
    """The standalone parser (the same options as `spikewatch bench early-warning`)."""
    from server.bench import add_options

    p = argparse.ArgumentParser(prog="python -m benchmarks.early_warning.runner",
                                description="Run the early-warning benchmark.")
    add_options(p)
    return p


def main(args: argparse.Namespace) -> int:
    """Run the benchmark with parsed options; 0 on success, 2 on bad options."""
    import torch

    from benchmarks.early_warning.scenarios import QUICK, SCENARIOS, by_name

    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:<32} {s.family:<14} {'control' if s.control else 'spiking'} "
                  f"{s.steps} steps")
        return 0
    ests = [e.strip() for e in args.curvature.split(",") if e.strip()]
    bad = [e for e in ests if e not in ESTIMATORS]
    try:
        if bad or not ests:
            raise KeyError(f"unknown estimator(s) {bad}; choose from {', '.join(ESTIMATORS)}")
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
        rows = run_suite(scenarios, ests, rules=args.rules, workdir=args.keep,
                         profile=args.profile)
    else:
        with tempfile.TemporaryDirectory(prefix="spikewatch-bench-") as d:
            rows = run_suite(scenarios, ests, rules=args.rules, workdir=Path(d),
                             profile=args.profile)
    print(table(rows))
    print(f"\n{len(rows)} runs in {time.perf_counter() - t0:.0f} s, profile {args.profile}, "
          f"torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} CPUs")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(parser().parse_args()))
