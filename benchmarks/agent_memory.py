"""The agent's extra host memory, measured in fresh processes: plain job vs attached job.

Each cell is its own Python process: the small transformer of benchmarks/agent_overhead.py
trains a few warm-up steps, then (attached arm) `agent.attach` streams to a real acknowledging
peer, then it trains `--steps` more. Printed per arm: RSS after warm-up, the rise at attach, the
rise over the steps, and peak RSS (VmHWM); then attached minus plain.

Two allocator settings, because the answer depends on glibc. Under its default dynamic mmap
threshold, large tensor temporaries of forward/backward come from the heap once the threshold has
risen, and any small block kept alive across steps pins heap pages between them: when the agent
kept references to the recorded tensors until the drain, the attached job's peak RSS was 66 MiB
above the plain one's (agent._collect now copies them into buffers of its own). With
`MALLOC_MMAP_THRESHOLD_=65536` large temporaries are mapped and unmapped each time, and what is
left is the agent's own memory.

    .venv/bin/python benchmarks/agent_memory.py [--steps 300] [--profile default] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def child(attached: bool, steps: int, profile: str, endpoint: str) -> dict[str, float]:
    """One arm in this process; returns MiB figures."""
    import torch
    from torch import nn

    from benchmarks._rss import peak_rss_bytes, rss_bytes
    from benchmarks._tinylm import BATCH, SEQ, VOCAB, TinyLM
    from spikewatch import agent  # both arms import it: the import is not the agent's running cost

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    data = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(1))
    x, y = data[:, :-1], data[:, 1:]
    monitor: agent.Monitor | None = None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
        torch.autograd.backward(loss)
        opt.step()
        if monitor is not None:
            monitor.log(loss=loss)

    for _ in range(5):
        step()
    base = rss_bytes() / 2**20
    if attached:
        monitor = agent.attach(model, opt, run="bench-memory", endpoint=endpoint, profile=profile,
                               logits_module=model.head)
    at_attach = rss_bytes() / 2**20
    for _ in range(steps):
        step()
    end = rss_bytes() / 2**20
    peak = peak_rss_bytes() / 2**20
    if monitor is not None:
        monitor.close(timeout=5.0)
    return {"base": base, "attach": at_attach - base, "steps": end - at_attach,
            "peak": peak}


def _run_child(attached: bool, args: argparse.Namespace, endpoint: str,
               env: dict[str, str]) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", "attached" if attached else "plain",
           "--steps", str(args.steps), "--profile", args.profile, "--endpoint", endpoint]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, check=False)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--repeats", type=int, default=2, help="processes per cell (median shown)")
    ap.add_argument("--child", choices=["plain", "attached"], help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "attached", args.steps, args.profile,
                               args.endpoint)))
        return
    sys.path.insert(0, str(ROOT))
    from tests.agent._peer import Peer

    print(f"agent memory: TinyLM, profile {args.profile}, {args.steps} steps after attach, "
          f"{args.repeats} process(es) per cell, median shown (MiB)")
    print(f"{'allocator':<30}{'arm':<10}{'base':>8}{'+attach':>9}{'+steps':>8}{'peak':>8}")
    with Peer() as peer:
        for label, env in (("glibc default", {}), ("MALLOC_MMAP_THRESHOLD_=65536", _FIXED_MMAP)):
            med: dict[bool, dict[str, float]] = {}
            for attached in (False, True):
                runs = [_run_child(attached, args, peer.endpoint, env)
                        for _ in range(args.repeats)]
                med[attached] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                m = med[attached]
                print(f"{label:<30}{'attached' if attached else 'plain':<10}{m['base']:>8.1f}"
                      f"{m['attach']:>9.1f}{m['steps']:>8.1f}{m['peak']:>8.1f}")
            extra_end = (med[True]["attach"] + med[True]["steps"]) - med[False]["steps"]
            extra_peak = (med[True]["peak"] - med[True]["base"]) - (
                med[False]["peak"] - med[False]["base"])
            print(f"{label:<30}{'agent':<10}{'':>8}{extra_end:>+17.1f}{extra_peak:>+8.1f}"
                  "   (end of run, peak; attached minus plain)")


if __name__ == "__main__":
    main()
