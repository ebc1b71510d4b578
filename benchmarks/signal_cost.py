"""Cost of each spikewatch signal as a multiple of one training step of a small transformer.

Model: token embedding + 2-layer nn.TransformerEncoder (d_model 128, 4 heads, ff 512) + LM head,
vocab 1000, batch 16×64 tokens, AdamW. Each repeat runs one real training step and, at the moment
the agent would run them (pre-step hook: gradients and state at t−1; post-step hook), times every
probe in isolation, in a rotating order (interleaved), synchronising the device around each timed
region. Prints the median step time and, per signal, the median cost and cost/step; on CUDA also
the number of synchronising operations each probe ran (torch.cuda.set_sync_debug_mode).

    .venv/bin/python benchmarks/signal_cost.py [--repeats 15] [--device cpu|cuda|all] [--threads N]

On a CPU shared with other jobs pass --threads 1: oversubscribed OpenMP threads spin and make
every number meaningless.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from spikewatch.monitor.adam_state import ParamView, adam_view
from spikewatch.monitor.curvature import TopEigen, gradient_curvature
from spikewatch.monitor.hparams import HparamWatch
from spikewatch.monitor.hvp import ExactHVP, FiniteDifferenceHVP
from spikewatch.monitor.overconfidence import overconfidence
from spikewatch.monitor.precond_decay import PreconditionerDecay
from spikewatch.monitor.secant import SecantEstimator
from spikewatch.monitor.spectral_alignment import SpectralAlignment
from spikewatch.monitor.spike_share import SpikeShare

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._tinylm import BATCH, SEQ, VOCAB, TinyLM

LAMBDA_MAX_ITERS = 8  # the agent's fixed iteration count (agent/_probes.py)


class Bench:
    """One model/optimizer/batch on a device, with every probe's state."""

    def __init__(self, device: torch.device) -> None:
        torch.manual_seed(0)
        self.device = device
        self.model = TinyLM().to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-4)
        gen = torch.Generator().manual_seed(1)
        data = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen).to(device)
        self.x, self.y = data[:, :-1], data[:, 1:]
        self.names: dict[Tensor, str] = {p: n for n, p in self.model.named_parameters()}
        self.params = list(self.model.parameters())
        self.logits: Tensor | None = None
        self.inputs: dict[str, Tensor] = {}
        self.linears = {n: m for n, m in self.model.named_modules() if isinstance(m, nn.Linear)}
        for name, mod in self.linears.items():
            mod.register_forward_hook(self._keep_input(name))
        self.sa = {n: SpectralAlignment() for n in self.linears}
        self.spike = SpikeShare()
        self.rho = PreconditionerDecay()
        self.hparams = HparamWatch()
        self.secant = SecantEstimator()
        self.top = TopEigen(max_iters=LAMBDA_MAX_ITERS, tol=None)

    def _keep_input(self, name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(_m: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
            self.inputs[name] = args[0].detach()

        return hook

    def loss(self) -> Tensor:
        logits = self.model(self.x)
        self.logits = logits.detach()
        out: Tensor = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), self.y.reshape(-1))
        return out

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def views(self) -> list[ParamView]:
        return [v for v in adam_view(self.opt, self.names) if v.grad is not None]

    # --- probes at the pre-step moment (each leaves training state untouched) -------------------
    def _saved_grads(self, fn: Callable[[], object]) -> None:
        saved = [p.grad for p in self.params]
        try:
            fn()
        finally:
            for p, g in zip(self.params, saved, strict=True):
                p.grad = g

    def exact_hvp(self) -> ExactHVP:
        # flash/efficient attention kernels have no double backward: the closure's forward uses
        # the math kernel (that is the exact backend's price; the FD backend keeps fast kernels)
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            return ExactHVP(self.loss(), self.params)

    def fd_hvp(self) -> FiniteDifferenceHVP:
        return FiniteDifferenceHVP(self.loss, self.params)

    def probes(self) -> dict[str, Callable[[], object]]:
        return {
            "rho (+ decay)": lambda: self.rho.update(self.views()),
            "spectral alignment (all Linear)": self.spectral_alignment,
            "spike share (all 2-D grads)": self.spike_share,
            "overconfidence": lambda: overconfidence(self.logits) if self.logits is not None else 0,
            "hparams (pre+post)": self.hparam_both,
            "lambda_grad exact HVP": lambda: self._saved_grads(
                lambda: gradient_curvature(self.views(), self.exact_hvp())
            ),
            "lambda_grad finite diff": lambda: self._saved_grads(
                lambda: gradient_curvature(self.views(), self.fd_hvp())
            ),
            f"lambda_max ({LAMBDA_MAX_ITERS} iters, exact)": lambda: self._saved_grads(
                lambda: self.top(self.views(), self.exact_hvp())
            ),
        }

    def spectral_alignment(self) -> None:
        for name, mod in self.linears.items():
            x = self.inputs.get(name)
            if x is not None:
                self.sa[name].update(mod.weight, x)

    def spike_share(self) -> None:
        for p in self.params:
            if p.ndim == 2 and p.grad is not None:
                self.spike.update(self.names[p], p.grad)

    def hparam_both(self) -> None:
        self.hparams.before_step(self.opt, 1)
        self.hparams.after_step(self.opt)


def _timed(bench: Bench, fn: Callable[[], object]) -> float:
    bench.sync()
    t0 = time.perf_counter()
    fn()
    bench.sync()
    return time.perf_counter() - t0


def _syncing(bench: Bench, probes: dict[str, Callable[[], object]]) -> dict[str, int]:
    """CUDA only: how many synchronising operations each probe ran (torch's sync debug mode)."""
    counts: dict[str, int] = {}
    for name, fn in probes.items():
        bench.sync()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts[name] = sum("synchroniz" in str(w.message) for w in caught)
    return counts


def run(device: torch.device, repeats: int, warmup: int) -> None:
    bench = Bench(device)
    probes = bench.probes()
    syncs: dict[str, int] = {}
    names = [*probes, "secant (post t + pre t+1)"]
    costs: dict[str, list[float]] = {n: [] for n in names}
    steps: list[float] = []
    secant_post = 0.0
    for i in range(warmup + repeats):
        bench.sync()
        t0 = time.perf_counter()
        bench.opt.zero_grad()
        bench.loss().backward()  # type: ignore[no-untyped-call]
        bench.sync()
        fwd_bwd = time.perf_counter() - t0
        order = list(probes)
        k = i % len(order)
        order = order[k:] + order[:k]  # rotate: no probe always runs first (cache) or last
        measured = {n: _timed(bench, probes[n]) for n in order}
        secant_pre = _timed(bench, lambda: bench.secant.before_step(bench.views()))
        opt_step = _timed(bench, bench.opt.step)
        post = _timed(bench, lambda: bench.secant.after_step(bench.views()))
        if i == warmup - 1 and device.type == "cuda":
            syncs = _syncing(bench, probes)
        if i >= warmup:
            steps.append(fwd_bwd + opt_step)
            for n, t in measured.items():
                costs[n].append(t)
            if i > warmup:
                costs[names[-1]].append(secant_post + secant_pre)
        secant_post = post
        print(f"\r{device.type}: repeat {i + 1}/{warmup + repeats}", end="", file=sys.stderr,
              flush=True)
    print(file=sys.stderr)
    step = statistics.median(steps)
    n_sa = sum(1 for n in bench.linears if n in bench.inputs)
    n_2d = sum(1 for p in bench.params if p.ndim == 2)
    n_params = sum(p.numel() for p in bench.params)
    print(f"\n== {device.type}: TinyLM {n_params / 1e6:.2f}M params, batch {BATCH}x{SEQ}, AdamW, "
          f"threads {torch.get_num_threads()}, {repeats} repeats (median) ==")
    print(f"SA layers measured: {n_sa} nn.Linear with a forward call; spike share: {n_2d} matrices")
    print(f"{'training step (fwd+bwd+AdamW)':<36} {step * 1e3:9.2f} ms   1.000x")
    for n in names:
        c = statistics.median(costs[n])
        sync = f"   host syncs: {syncs[n]}" if n in syncs else ""
        print(f"{n:<36} {c * 1e3:9.2f} ms   {c / step:.3f}x{sync}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        else:
            print("CUDA not available: CPU only")
    for dev in devices:
        run(dev, args.repeats, args.warmup)


if __name__ == "__main__":
    main()
