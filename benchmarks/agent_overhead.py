"""Step-time cost and memory of the attached agent, per profile, on a small transformer.

Two identical models (same init, same batch, same optimizer) train in one process; one has the
agent attached, the other not. They run in interleaved blocks (unattached, attached, unattached,
...) so machine noise hits both alike. A block is a whole number of drain periods, so each holds
the same share of the agent's periodic work; the ratio attached/unattached is the median over
block pairs of the ratio of block mean step times (also printed: the ratio of total times).
Pairs alternate which model runs first. The agent streams to a real ZeroMQ peer that acknowledges
(the test peer, in its own process), or to `--endpoint`, or to nobody (`--no-server`: outage).
Memory: Python allocations (tracemalloc) and process RSS before/after attaching and training, and
on CUDA the allocator's peak of an attached step minus an unattached one.

Model (as benchmarks/signal_cost.py): token embedding + 2-layer nn.TransformerEncoder (d_model
128, 4 heads, ff 512) + LM head, vocab 1000, batch 16×64 tokens, AdamW, one CPU thread.

    .venv/bin/python benchmarks/agent_overhead.py [--blocks 12] [--block-steps 25]
        [--profiles light,default,full,full+closure] [--device cpu|cuda] [--no-server]
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

import agent
from agent._monitor import Monitor

VOCAB, D_MODEL, LAYERS, HEADS, FF, BATCH, SEQ = 1000, 128, 2, 4, 512, 16, 64


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, VOCAB)

    def forward(self, tokens: Tensor) -> Tensor:
        out: Tensor = self.head(self.encoder(self.embed(tokens)))
        return out


_PEER = (
    "import sys; from tests.agent._peer import Peer\n"
    "p = Peer().start(); print(p.endpoint, flush=True); sys.stdin.readline(); p.stop()\n"
)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Job:
    """One model + optimizer + fixed batch; `step()` is one ordinary training step."""

    def __init__(self, base: TinyLM, device: torch.device, data: Tensor) -> None:
        self.model = copy.deepcopy(base).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-4)
        self.x, self.y = data[:, :-1], data[:, 1:]
        self.monitor: Monitor | None = None

    def loss(self) -> Tensor:
        logits = self.model(self.x)
        return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), self.y.reshape(-1))

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss()
        torch.autograd.backward(loss)
        self.opt.step()
        if self.monitor is not None:
            self.monitor.log(loss=loss)


def _block(job: Job, steps: int, sync: Callable[[], None]) -> tuple[float, float]:
    """Mean wall and mean training-thread CPU seconds per step over `steps` steps."""
    w0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(steps):
        job.step()
        sync()
    return (time.perf_counter() - w0) / steps, (time.thread_time() - c0) / steps


def _sender_cpu() -> float:
    """CPU seconds used so far by the agents' transport sender threads."""
    total = 0.0
    for t in threading.enumerate():
        if t.name == "spikewatch-transport" and t.ident is not None and t.is_alive():
            with contextlib.suppress(OSError, ProcessLookupError):
                total += time.clock_gettime(time.pthread_getcpuclockid(t.ident))
    return total


def run_profile(name: str, args: argparse.Namespace, endpoint: str, device: torch.device
                ) -> dict[str, float]:
    profile, _, variant = name.partition("+")
    torch.manual_seed(0)
    base = TinyLM()
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen).to(device)
    plain, watched = Job(base, device, data), Job(base, device, data)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(3):  # warm both up (allocator, kernels) before anything is measured
        plain.step()
        watched.step()
    gc.collect()
    tracemalloc.start()
    py0, rss0 = tracemalloc.get_traced_memory()[0], _rss()
    watched.monitor = agent.attach(
        watched.model, watched.opt, run=f"bench-{profile}-{variant or 'plain'}",
        endpoint=endpoint, profile=profile, closure=watched.loss if variant == "closure" else None,
        overhead_budget=args.budget, logits_module=watched.model.head)
    _block(watched, args.warmup, sync)  # the agent's first drains and budget adjustments
    wall_ratios, cpu_ratios = [], []
    plain_wall, watched_wall, plain_cpu, watched_cpu = [], [], [], []
    cuda_plain = cuda_watched = 0
    sender0 = _sender_cpu()
    for b in range(args.blocks):
        # alternate which of the pair runs first, so slow drifts of the machine cancel out
        for job in (plain, watched) if b % 2 == 0 else (watched, plain):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            if job is plain:
                pw, pc = _block(plain, args.block_steps, sync)
            else:
                ww, wc = _block(watched, args.block_steps, sync)
            if cuda:
                peak = torch.cuda.max_memory_allocated()
                if job is plain:
                    cuda_plain = max(cuda_plain, peak)
                else:
                    cuda_watched = max(cuda_watched, peak)
        plain_wall.append(pw)
        watched_wall.append(ww)
        plain_cpu.append(pc)
        watched_cpu.append(wc)
        wall_ratios.append(ww / pw)
        cpu_ratios.append(wc / pc)
    sender_per_step = (_sender_cpu() - sender0) / (args.blocks * args.block_steps)
    py1, py_peak = tracemalloc.get_traced_memory()
    rss1 = _rss()
    tracemalloc.stop()
    mon = watched.monitor
    report = mon.last_report
    t0 = time.perf_counter()
    mon.close(timeout=5.0)
    close_s = time.perf_counter() - t0
    c = mon.counters()
    out = {
        "cpu_ratio": statistics.median(cpu_ratios),
        "cpu_total": (sum(watched_cpu) + sender_per_step * len(watched_cpu)) / sum(plain_cpu),
        "wall_ratio": statistics.median(wall_ratios),
        "wall_min": min(wall_ratios),
        "wall_max": max(wall_ratios),
        "plain_ms": 1e3 * statistics.median(plain_cpu),
        "watched_ms": 1e3 * statistics.median(watched_cpu),
        "sender_ms": 1e3 * sender_per_step,
        "self_overhead": report.overhead if report else float("nan"),
        "py_kib": (py1 - py0) / 1024,
        "py_peak_kib": (py_peak - py0) / 1024,
        "rss_mib": (rss1 - rss0) / 2**20,
        "cuda_mib": (cuda_watched - cuda_plain) / 2**20,
        "close_s": close_s,
        "acked": float(c.acked) if c is not None else float("nan"),
        "dropped": float(c.dropped) if c is not None else float("nan"),
    }
    if report is not None:
        print(f"  {name}: cadences {dict(sorted(report.cadences.items()))}")
        shares = ", ".join(f"{k} {100 * v:.2f}%" for k, v in
                           sorted(report.probe_overhead.items(), key=lambda kv: -kv[1]))
        print(f"  {name}: per-probe share of step time: {shares}")
    return out


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
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--block-steps", type=int, default=50, help="a multiple of 50 (drains)")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--budget", type=float, default=0.01)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--endpoint", default=None, help="a running spikewatch server")
    ap.add_argument("--no-server", action="store_true", help="stream to nobody (outage)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peer = None
    if args.endpoint:
        endpoint = args.endpoint
    elif args.no_server:
        from tests.agent._peer import free_endpoint

        endpoint = free_endpoint()
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
          f"server: {'none' if args.no_server else endpoint}")
    print(f"{args.blocks} interleaved block pairs x {args.block_steps} steps (block mean) after "
          f"{args.warmup} warm-up steps")
    _import_once(endpoint)
    rows = []
    try:
        for name in args.profiles.split(","):
            rows.append((name, run_profile(name, args, endpoint, device)))
    finally:
        if peer is not None:
            peer.communicate("stop\n", timeout=30)
    print()
    print("ratio = attached/unattached: 'cpu' median over block pairs of training-thread CPU time;"
          " 'cpu+tx' adds the\ntransport thread's CPU (ratio of totals); 'wall' median of wall"
          " time ratios and its range (noisy on a shared machine)")
    print(f"{'profile':<14}{'cpu':>8}{'cpu+tx':>8}{'wall':>8}{'wall range':>14}"
          f"{'plain ms':>10}{'agent ms':>10}{'tx ms':>7}{'self-meas.':>11}{'py KiB':>9}"
          f"{'RSS MiB':>9}{'CUDA MiB':>9}{'close s':>8}{'acked':>7}{'drop':>6}")
    for name, r in rows:
        print(f"{name:<14}{r['cpu_ratio']:>8.4f}{r['cpu_total']:>8.4f}{r['wall_ratio']:>8.4f}"
              f"   {r['wall_min']:.3f}-{r['wall_max']:.3f}"
              f"{r['plain_ms']:>10.2f}{r['watched_ms']:>10.2f}{r['sender_ms']:>7.3f}"
              f"{100 * r['self_overhead']:>10.2f}%"
              f"{r['py_kib']:>9.1f}{r['rss_mib']:>9.2f}{r['cuda_mib']:>9.2f}{r['close_s']:>8.3f}"
              f"{r['acked']:>7.0f}{r['dropped']:>6.0f}")
    target = dict(rows).get("default")
    if target is not None:
        verdict = "meets" if target["cpu_total"] <= 1.01 else "MISSES"
        print(f"\ndefault profile: {target['cpu_ratio']:.4f}x training-thread CPU, "
              f"{target['cpu_total']:.4f}x with the transport thread: {verdict} the 1.01x target")


if __name__ == "__main__":
    main()
