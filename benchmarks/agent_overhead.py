"""Step-time cost and memory of the attached agent, per profile, on a small transformer.

A round runs three short blocks of training steps, A, B and W, in an order that rotates
through all six permutations, so drifts of a shared machine hit all arms alike. By default
(`--arms same`) all three train one model: the agent is attached once and paused during the A and
B blocks (its hooks return at once), so no memory-layout difference between two model copies
(measured at up to ±2%) biases the comparison; the cadences the overhead budget settled on during
warm-up are kept while measuring. `--arms models` trains three identical models instead, the
agent attached to W. The decision statistic is the ratio of summed training-thread CPU time
(`time.thread_time`), W / mean(A, B), with a bootstrap 95% CI over rounds; the A/A control B / A,
measured the same way in the same run, shows the noise floor. Totals span a whole number of drain
periods. The verdict line says whether the default profile meets the 1.01x target, misses it, or
whether this run's noise cannot decide. The transport thread's CPU is reported apart (+tx). A
deterministic count of Python/C calls per step (sys.setprofile) is printed beside it.
The agent streams to a real ZeroMQ peer that acknowledges (the test peer, in its own process),
or to `--endpoint`, or to nobody (`--no-server`: outage).
`--pin` gives the training thread a CPU of its own and puts every other thread and process (the
transport sender, ZeroMQ's I/O thread, the peer) on the remaining CPUs, as on a training node whose
server runs elsewhere; without it, on a 2-CPU machine the peer's decoding and the sender share the
training thread's core and cool its caches, a cost a real deployment does not have.
`--compile` runs the model through torch.compile (inductor) and attaches to the compiled module
before its first forward; a paused agent closes its hook gate, so A and B run the ordinary-step
graph, which carries no agent code (tests/agent/test_compile.py).
Memory: process RSS before/after attaching and training, on CUDA the allocator's peak of an
attached step minus an unattached one, and with `--tracemalloc` the Python allocations. tracemalloc
is off by default: it slows every Python allocation, the agent's far more than the training
step's (it made the default profile's predictor look 3x dearer and stretched it to every 16th
step), so step times under it are not what a user gets. benchmarks/agent_memory.py measures
memory in fresh processes.

Model (as benchmarks/signal_cost.py): token embedding + 2-layer nn.TransformerEncoder (d_model
128, 4 heads, ff 512) + LM head, vocab 1000, batch 16×64 tokens, AdamW, one CPU thread.

    .venv/bin/python benchmarks/agent_overhead.py [--rounds 60] [--block-steps 5]
        [--profiles light,default,full,full+closure] [--device cpu|cuda] [--no-server] [--compile]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from benchmarks._rss import rss_bytes
from benchmarks._tinylm import (
    BATCH,
    LR_SCHEDULES,
    SEQ,
    VOCAB,
    Job,
    TinyLM,
    disable_probes,
    predictor_footprint,
)
from spikewatch import agent
from spikewatch.agent._monitor import Monitor

_PEER = (
    "import sys; from tests.agent._peer import Peer\n"
    "p = Peer().start(); print(p.endpoint, flush=True); sys.stdin.readline(); p.stop()\n"
)


def _block(job: Job, steps: int, sync: Callable[[], None]) -> tuple[float, float]:
    """Mean wall and mean training-thread CPU seconds per step over `steps` steps."""
    w0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(steps):
        job.step()
        sync()
    return (time.perf_counter() - w0) / steps, (time.thread_time() - c0) / steps


def _calls_per_step(job: Job, steps: int) -> float:
    """Python and C function calls per training step (sys.setprofile): a deterministic count of
    the interpreter work a step does, free of timing noise."""
    n = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal n
        if event in ("call", "c_call"):
            n += 1
    sys.setprofile(count)
    try:
        for _ in range(steps):
            job.step()
    finally:
        sys.setprofile(None)
    return n / steps


def _set_active(mon: Monitor, on: bool) -> None:
    """Pause or resume an attached monitor: while paused its hooks and log() return at once
    (a few Python calls per step remain, so a paused step is a conservative baseline)."""
    if mon._closed != on:
        return
    mon._closed = not on
    if on:
        mon._plan(mon.step)
    else:
        for a in mon._armed:
            a.arm(None)
        mon._gate.open = False  # a compiled forward takes its ordinary-step graph


def _sender_cpu() -> float:
    """CPU seconds used so far by the agents' transport sender threads."""
    total = 0.0
    for t in threading.enumerate():
        if t.name == "spikewatch-transport" and t.ident is not None and t.is_alive():
            with contextlib.suppress(OSError, ProcessLookupError):
                total += time.clock_gettime(time.pthread_getcpuclockid(t.ident))
    return total


SETTLED_WINDOWS = 4  # budget windows with unchanged cadences before measuring


def run_profile(name: str, args: argparse.Namespace, endpoint: str, device: torch.device
                ) -> dict[str, float]:
    profile, _, variant = name.partition("+")
    torch.manual_seed(0)
    base = TinyLM()
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen).to(device)
    same = args.arms == "same"
    if same:
        plain = control = watched = Job(base, device, data, args.compile, args.lr_schedule)
    else:
        plain, control, watched = (Job(base, device, data, args.compile, args.lr_schedule)
                                   for _ in range(3))
    jobs = list(dict.fromkeys((plain, control, watched)))
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(0 if args.compile else 3):  # warm up (allocator, kernels) before measuring;
        for j in jobs:  # a compiled model must meet the agent's hooks at its first forward
            j.step()
    gc.collect()
    if args.tracemalloc:
        tracemalloc.start()
    py0, rss0 = tracemalloc.get_traced_memory()[0], rss_bytes()
    mon = watched.monitor = agent.attach(
        watched.net, watched.opt, run=f"bench-{profile}-{variant or 'plain'}",
        endpoint=endpoint, profile=profile, closure=watched.loss if variant == "closure" else None,
        spool_dir=args.spool_dir, guard=args.guard,
        overhead_budget=args.budget, logits_module=watched.model.head)
    # Warm up until the budget has seen every scheduled probe run and has adjusted after it (a
    # probe with cadence 200 first runs at step 200): cadences frozen earlier would keep a costly
    # probe at its profile's cadence for the whole measurement. Then until the cadences held for
    # SETTLED_WINDOWS windows: the first windows of a job cost more (an lr warm-up), and what
    # they stretched comes back only after windows that fit.
    warm, settled_at = 0, None
    drain = mon.scheduler.profile.drain_every
    cadences, held = mon.scheduler.cadences(), 0
    while (warm < args.warmup or settled_at is None or warm < settled_at
           or held < SETTLED_WINDOWS * drain):
        for j in jobs:
            j.step()
        warm += 1
        now = mon.scheduler.cadences()
        held = held + 1 if now == cadences else 0
        cadences = now
        if settled_at is None and mon.enabled and not mon.scheduler.unmeasured():
            settled_at = warm + 2 * drain
        if warm >= args.max_warmup:
            print(f"  {name}: warm-up stopped at {warm} steps; unmeasured: "
                  f"{mon.scheduler.unmeasured()}")
            break
    print(f"  {name}: {warm} warm-up steps")
    disable_probes(mon, filter(None, args.disable.split(",")))  # diagnosis: what costs what
    if args.pin:  # threads created at attach started on the other CPUs; training gets its own
        os.sched_setaffinity(0, args.pin[0])
    report = mon.last_report  # what the budget settled on, measured with the agent alone on
    if same:  # paused blocks would count as step time: keep the settled cadences
        mon.scheduler.stretch = False
    drain = mon.scheduler.profile.drain_every if mon.enabled else 1
    rounds = -(-args.rounds * args.block_steps // drain) * drain // args.block_steps
    arms = ("A", "B", "W")
    job_of = {"A": plain, "B": control, "W": watched}
    orders = list(itertools.permutations(arms))
    cpu: dict[str, list[float]] = {a: [] for a in arms}
    wall: dict[str, list[float]] = {a: [] for a in arms}
    cuda_peak = dict.fromkeys(arms, 0)
    sender0 = _sender_cpu()
    for r in range(rounds):
        for arm in orders[r % len(orders)]:
            if same:
                _set_active(mon, arm == "W")
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            w, c = _block(job_of[arm], args.block_steps, sync)
            wall[arm].append(w)
            cpu[arm].append(c)
            if cuda:
                cuda_peak[arm] = max(cuda_peak[arm], torch.cuda.max_memory_allocated())
    _set_active(mon, True)
    steps = rounds * args.block_steps
    sender_per_step = (_sender_cpu() - sender0) / steps
    calls = {"A": 0.0, "W": 0.0}
    for arm in calls:
        _set_active(mon, arm == "W")
        calls[arm] = _calls_per_step(job_of[arm], 2 * drain)
    _set_active(mon, True)
    ratio, lo, hi = _ratio_ci(cpu["W"], [0.5 * (x + y) for x, y in
                                         zip(cpu["A"], cpu["B"], strict=True)])
    aa, aa_lo, aa_hi = _ratio_ci(cpu["B"], cpu["A"])
    wall_ratio, _, _ = _ratio_ci(wall["W"], [0.5 * (x + y) for x, y in
                                             zip(wall["A"], wall["B"], strict=True)])
    plain_per_step = 0.5 * (sum(cpu["A"]) + sum(cpu["B"])) / rounds
    py1, py_peak = tracemalloc.get_traced_memory()
    rss1 = rss_bytes()
    if args.tracemalloc:
        tracemalloc.stop()
    if args.pin:  # the next profile's threads must again start on the other CPUs
        os.sched_setaffinity(0, args.pin[1])
    t0 = time.perf_counter()
    mon.close(timeout=5.0)
    close_s = time.perf_counter() - t0
    c = mon.counters()
    out = {
        "cpu_ratio": ratio, "cpu_lo": lo, "cpu_hi": hi,
        "aa_ratio": aa, "aa_lo": aa_lo, "aa_hi": aa_hi,
        "cpu_total": ratio + sender_per_step / plain_per_step,
        "wall_ratio": wall_ratio,
        "plain_ms": 1e3 * plain_per_step,
        "watched_ms": 1e3 * sum(cpu["W"]) / rounds,
        "sender_ms": 1e3 * sender_per_step,
        "self_overhead": report.overhead if report else float("nan"),
        "py_kib": (py1 - py0) / 1024 if args.tracemalloc else float("nan"),
        "py_peak_kib": (py_peak - py0) / 1024 if args.tracemalloc else float("nan"),
        "rss_mib": (rss1 - rss0) / 2**20,
        "cuda_mib": (cuda_peak["W"] - max(cuda_peak["A"], cuda_peak["B"])) / 2**20,
        "close_s": close_s,
        "acked": float(c.acked) if c is not None else float("nan"),
        "dropped": float(c.dropped) if c is not None else float("nan"),
        "spooled": float(c.spooled) if c is not None else float("nan"),
        "rounds": float(rounds),
        "calls_plain": calls["A"],
        "calls_watched": calls["W"],
    }
    if report is not None:
        print(f"  {name}: cadences {dict(sorted(report.cadences.items()))}")
        shares = ", ".join(f"{k} {100 * v:.2f}%" for k, v in
                           sorted(report.probe_overhead.items(), key=lambda kv: -kv[1]))
        print(f"  {name}: per-probe share of step time: {shares}")
        per_call = {p: f"{1e6 * mon.scheduler.cost(p):.0f} µs" for p in
                    sorted(report.probe_overhead) if mon.scheduler.cost(p) > 0}
        print(f"  {name}: per-probe cost per run: {per_call}")
        foot = predictor_footprint(mon)
        if foot is not None:
            print(f"  {name}: predictor sample {foot[0]} coordinates of "
                  f"{sum(p.numel() for p in watched.net.parameters())}, {foot[1]} bytes held")
    guard = getattr(mon, "_guard", None)
    if guard is not None:
        print(f"  {name}: guard actions {guard.actions} (0: it watched, never acted)")
    return out


def _ratio_ci(num: list[float], den: list[float], n_boot: int = 4000, seed: int = 0
              ) -> tuple[float, float, float]:
    """Σnum/Σden and its bootstrap 95% CI, resampling rounds (pairs stay together)."""
    ratio = sum(num) / sum(den)
    rng = random.Random(seed)
    n = len(num)
    boots = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        boots.append(sum(num[i] for i in idx) / sum(den[i] for i in idx))
    boots.sort()
    return ratio, boots[int(0.025 * n_boot)], boots[int(0.975 * n_boot) - 1]


def _verdict(r: dict[str, float], target: float) -> str:
    ci = f"{r['cpu_ratio']:.4f}x, 95% CI {r['cpu_lo']:.4f}-{r['cpu_hi']:.4f}"
    noise = f"A/A control {r['aa_ratio']:.4f}x, CI {r['aa_lo']:.4f}-{r['aa_hi']:.4f}"
    if r["cpu_hi"] <= target:
        return f"target MET: {ci} <= {target}x ({noise})"
    if r["cpu_lo"] > target:
        return f"target NOT MET: {ci} > {target}x ({noise})"
    return f"UNDECIDABLE at this noise: {ci} straddles {target}x ({noise})"


def _import_once(endpoint: str) -> None:
    """Attach once to a throwaway model so lazy imports do not count as the first profile's."""
    m = nn.Linear(4, 4)
    opt = torch.optim.Adam(m.parameters())
    mon = agent.attach(m, opt, run="bench-warmup", endpoint=endpoint, profile="full",
                       closure=lambda: m(torch.ones(2, 4)).sum())
    for _ in range(2):
        opt.zero_grad()
        loss = m(torch.ones(2, 4)).sum()
        torch.autograd.backward(loss)
        opt.step()
        mon.log(loss=loss)
    mon.close(timeout=2.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--profiles", default="light,default,full,full+closure")
    ap.add_argument("--rounds", type=int, default=60, help="rounds of one block per model "
                    "(rounded up to whole drain periods)")
    ap.add_argument("--block-steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=100, help="at least this many warm-up steps")
    ap.add_argument("--max-warmup", type=int, default=3000,
                    help="at most this many, even if a probe has not run yet")
    ap.add_argument("--target", type=float, default=1.01)
    ap.add_argument("--arms", choices=("same", "models"), default="same",
                    help="same: one model, the agent paused in the A and B blocks (no layout "
                    "bias between models); models: three identical models, the agent on W")
    ap.add_argument("--budget", type=float, default=0.01)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--endpoint", default=None, help="a running spikewatch server")
    ap.add_argument("--no-server", action="store_true",
                    help="stream to nobody (outage): batches spool to a temporary directory")
    ap.add_argument("--spool-dir", default=None, help="the agent's spool directory")
    ap.add_argument("--disable", default="",
                    help="comma-separated probes to switch off after attach (to locate a cost)")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="also count Python allocations (slows the agent's Python: not a user's "
                    "step time)")
    ap.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="none",
                    help="cosine: a warm-up + cosine LambdaLR steps after every optimizer step "
                         "(the lr changes at every step, as in most real jobs)")
    ap.add_argument("--guard", action="store_true",
                    help="attach with guard=True (it only acts past the edge, which this job never "
                         "reaches: the cost of a guard that watches)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the model (inductor) and attach to the compiled module")
    ap.add_argument("--pin", action="store_true",
                    help="training thread alone on one CPU, everything else on the others")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            ap.error("--pin needs at least 2 CPUs")
        args.pin = ({cpus[0]}, set(cpus[1:]))
        os.sched_setaffinity(0, args.pin[1])  # threads and processes started from now inherit
    device = torch.device(args.device)
    peer = None
    made_spool: str | None = None
    if args.endpoint:
        endpoint = args.endpoint
    elif args.no_server:
        from tests.agent._peer import free_endpoint

        endpoint = free_endpoint()
        if args.spool_dir is None:
            args.spool_dir = made_spool = tempfile.mkdtemp(prefix="spikewatch-bench-spool-")
    else:
        # the acknowledging peer runs in its own process, as a server would: its decoding must
        # not compete with the training thread for this process's GIL
        peer = subprocess.Popen(
            [sys.executable, "-c", _PEER], stdout=subprocess.PIPE, stdin=subprocess.PIPE,
            text=True, cwd=str(Path(__file__).resolve().parent.parent))
        assert peer.stdout is not None
        endpoint = peer.stdout.readline().strip()
    print(f"agent overhead: TinyLM {sum(p.numel() for p in TinyLM().parameters())} params, "
          f"batch {BATCH}x{SEQ}, device {device}, torch {torch.__version__}, "
          f"{args.threads} thread(s), budget {args.budget}, "
          f"{'torch.compile, ' if args.compile else ''}{'guard=True, ' if args.guard else ''}"
          f"{'lr schedule ' + args.lr_schedule + ', ' if args.lr_schedule != 'none' else ''}"
          f"server: {'none' if args.no_server else endpoint}"
          + (f", training thread pinned to CPU {min(args.pin[0])}" if args.pin else ""))
    print(f"~{args.rounds} rounds x 3 interleaved blocks (A, B agent off; W on; arms: "
          f"{args.arms}) x {args.block_steps} steps after >= {args.warmup} warm-up steps "
          "(until every probe ran)")
    _import_once(endpoint)
    rows = []
    try:
        for name in args.profiles.split(","):
            rows.append((name, run_profile(name, args, endpoint, device)))
    finally:
        if peer is not None:
            peer.communicate("stop\n", timeout=30)
        if made_spool is not None:
            shutil.rmtree(made_spool, ignore_errors=True)
    print()
    print("cpu = Σ training-thread CPU of W / mean of A and B, with bootstrap 95% CI over rounds;"
          " A/A = B / A (noise\nfloor); +tx adds the transport thread's CPU; wall = the same"
          " ratio of wall time (noisy on a shared machine)")
    print(f"{'profile':<14}{'cpu':>8}{'95% CI':>16}{'A/A':>8}{'A/A CI':>16}{'+tx':>8}"
          f"{'wall':>8}{'plain ms':>10}{'agent ms':>10}{'tx ms':>7}{'self-meas.':>11}"
          f"{'py KiB':>9}{'RSS MiB':>9}{'CUDA MiB':>9}{'close s':>8}{'acked':>7}{'spool':>6}"
          f"{'drop':>6}")
    for name, r in rows:
        print(f"{name:<14}{r['cpu_ratio']:>8.4f}   {r['cpu_lo']:.4f}-{r['cpu_hi']:.4f}"
              f"{r['aa_ratio']:>8.4f}   {r['aa_lo']:.4f}-{r['aa_hi']:.4f}{r['cpu_total']:>8.4f}"
              f"{r['wall_ratio']:>8.4f}{r['plain_ms']:>10.2f}{r['watched_ms']:>10.2f}"
              f"{r['sender_ms']:>7.3f}{100 * r['self_overhead']:>10.2f}%"
              f"{r['py_kib']:>9.1f}{r['rss_mib']:>9.2f}{r['cuda_mib']:>9.2f}{r['close_s']:>8.3f}"
              f"{r['acked']:>7.0f}{r['spooled']:>6.0f}{r['dropped']:>6.0f}")
    print()
    for name, r in rows:
        print(f"{name}: Python+C calls per step {r['calls_watched']:.0f} attached vs "
              f"{r['calls_plain']:.0f} unattached (+{r['calls_watched'] - r['calls_plain']:.0f},"
              " sys.setprofile, deterministic)")
    for name, r in rows:
        print(f"{name}: {_verdict(r, args.target)}")


if __name__ == "__main__":
    main()
