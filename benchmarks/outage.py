"""Outage: training with no spikewatch server at all, then the server appears; and a full spool.

1. Step time. Two identical small transformer language models (CPU) train side by side in
   interleaved blocks of `--block` steps; one is attached with `agent.attach` (default profile and
   overhead budget) to an endpoint nobody listens on, spool directory in a temporary folder. The
   ratio of the median attached block time to the median unattached block time is reported
   (target <= 1.01), with the spool's size at the end.
2. Replay. The real daemon (`spikewatch serve`, SQLite) is started while the attached
   monitor is still open; reported: time to ready, and time from ready until the spool is empty
   and every spooled step's loss is in the database. Then the monitor closes and every training
   step's loss must be stored exactly once.
3. Full spool. A `Transport` with a tiny spool (`--spool-kib`) and no server gets batches of
   priorities 0 (diagnostics), 1 (signals) and 2 (events) in turn. Reported: bytes per priority
   lane on disk, the drop counters, the largest `submit` latency (it must never block); then the
   daemon starts and what survives is counted per priority from the database.

    .venv/bin/python benchmarks/outage.py [--quick]

Prints numbers; exits non-zero only if data that should have been stored is missing.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._services import ServerProcess  # noqa: E402
from spikewatch import agent  # noqa: E402
from spikewatch.agent._transport import (  # noqa: E402
    PRIORITY_DIAGNOSTICS,
    PRIORITY_EVENTS,
    PRIORITY_SIGNALS,
    Transport,
    TransportCounters,
)
from spikewatch.protocol import wire  # noqa: E402
from spikewatch.server.collector import wait_until  # noqa: E402

# One metric per priority, so what survived can be counted per priority in the database.
PRIORITY_METRIC = {PRIORITY_DIAGNOSTICS: "agent_queued", PRIORITY_SIGNALS: "loss",
                   PRIORITY_EVENTS: "lr"}


class TinyLM(nn.Module):
    """A 2-layer transformer encoder language model (d=128, 4 heads, vocab 256, 0.5 M params)."""

    def __init__(self, vocab: int = 256, d: int = 128, layers: int = 2, seq: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(seq, d))
        block = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True)
        self.body = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.body(self.embed(x) + self.pos[: x.shape[1]]))
        return out


def _trainer(model: nn.Module, opt: torch.optim.Optimizer, data: list[torch.Tensor],
             monitor: Any = None) -> Callable[[int], None]:
    loss_fn = nn.CrossEntropyLoss()

    def step(i: int) -> None:
        x = data[i % len(data)]
        opt.zero_grad(set_to_none=True)
        logits = model(x[:, :-1])
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        if monitor is not None:
            monitor.log(loss)

    return step


def _db_count(url: str, run: str, metric: str) -> tuple[int, int, int, int]:
    """(rows, distinct steps, min step, max step) of one scalar metric of one run."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(text(
                "SELECT count(*), count(DISTINCT s.step), min(s.step), max(s.step) "
                "FROM scalars s JOIN runs r ON r.id = s.run_id "
                "WHERE r.name = :run AND s.metric = :m AND s.rank = 0"),
                {"run": run, "m": metric}).one()
    except Exception:  # the schema is not there yet
        return (0, 0, -1, -1)
    finally:
        engine.dispose()
    return (int(row[0]), int(row[1]), int(row[2] if row[2] is not None else -1),
            int(row[3] if row[3] is not None else -1))


def step_time_and_replay(args: argparse.Namespace, work: Path) -> bool:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    base = TinyLM()
    plain, watched = base, copy.deepcopy(base)
    opt_p = torch.optim.AdamW(plain.parameters(), lr=3e-4)
    opt_w = torch.optim.AdamW(watched.parameters(), lr=3e-4)
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, 256, (16, 65), generator=g) for _ in range(64)]
    url = f"sqlite:///{work / 'outage.db'}"
    server = ServerProcess(url, work)  # its ports are chosen now; it starts after the timed run
    dead = server.zmq  # nobody listens here for the whole timed run
    spool = work / "spool"
    run = "outage-bench"
    mon = None if args.control else agent.attach(watched, opt_w, run=run, endpoint=dead,
                                                 spool_dir=spool, profile=args.profile)
    step_p, step_w = _trainer(plain, opt_p, data), _trainer(watched, opt_w, data, mon)
    i_p = i_w = 0
    for _ in range(args.block):  # warm-up, not timed (allocator, first probes, first connect)
        step_p(i_p)
        step_w(i_w)
        i_p += 1
        i_w += 1
    blocks: dict[str, list[float]] = {"plain": [], "attached": []}
    for b in range(2 * args.pairs):
        name = "plain" if b % 2 == 0 else "attached"
        t0 = time.perf_counter()
        for _ in range(args.block):
            if name == "plain":
                step_p(i_p)
                i_p += 1
            else:
                step_w(i_w)
                i_w += 1
        blocks[name].append((time.perf_counter() - t0) / args.block)
    med_p, med_w = statistics.median(blocks["plain"]), statistics.median(blocks["attached"])
    mean_ratio = statistics.fmean(blocks["attached"]) / statistics.fmean(blocks["plain"])
    if mon is None:
        print(f"control (both copies unattached, {args.pairs} x 2 blocks of {args.block} steps): "
              f"{med_p * 1e3:.2f} vs {med_w * 1e3:.2f} ms/step, ratio {med_w / med_p:.4f}, "
              f"ratio of means {mean_ratio:.4f}")
        return True
    c = mon.counters()
    print(f"step time, server absent for the whole run ({args.pairs} x 2 interleaved blocks of "
          f"{args.block} steps, {args.threads} torch thread(s), profile {args.profile}, "
          f"{i_w} attached steps in all):")
    print(f"  unattached {med_p * 1e3:.2f} ms/step, attached {med_w * 1e3:.2f} ms/step (median "
          f"blocks): ratio {med_w / med_p:.4f} (target <= 1.01); ratio of means {mean_ratio:.4f}")
    rep = mon.last_report
    if rep is not None:
        print(f"  the agent's own measure: overhead {rep.overhead:.2%} of step time; transport "
              f"sender thread CPU {c.sender_cpu_seconds / (i_w * med_w):.3%} of attached time")
    print(f"  transport: online={c.online} submitted={c.submitted} spooled={c.spooled} "
          f"spool_pending={c.spool_pending} spool_bytes={c.spool_bytes} dropped={c.dropped} "
          f"sender CPU {c.sender_cpu_seconds:.3f} s")
    on_disk = sum(p.stat().st_size for p in spool.rglob("*.seg"))
    print(f"  spool on disk: {on_disk / 1024:.1f} KiB in "
          f"{sum(1 for _ in spool.rglob('*.seg'))} segment file(s)")

    # --- the server appears -------------------------------------------------------------------
    t_start = time.perf_counter()
    server.start()
    ok = True
    try:
        server.wait_ready()
        t_ready = time.perf_counter()
        pending = c.spool_pending

        def replayed() -> bool:
            k: TransportCounters = mon.counters()
            return bool(k.spool_pending == 0 and k.in_flight == 0 and k.queued == 0
                    and k.acked == k.submitted)

        done = wait_until(replayed, args.replay_timeout)
        t_done = time.perf_counter()
        rows = _db_count(url, run, "loss")[0]
        print(f"replay: daemon ready {t_ready - t_start:.2f} s after start; {pending} spooled "
              f"batches replayed, acknowledged (= committed) and {rows} steps' loss in the "
              f"database {t_done - t_ready:.2f} s after ready"
              + ("" if done else " (TIMED OUT)"))
        ok &= done
        mon.close(timeout=30)
        rows, distinct, lo, hi = _db_count(url, run, "loss")
        complete = rows == distinct == i_w and hi - lo == i_w - 1
        print(f"  after close: {rows} loss rows, {distinct} distinct steps {lo}..{hi} for "
              f"{i_w} training steps: " + ("every step exactly once" if complete else "MISSING"))
        ok &= complete
    finally:
        mon.close(timeout=5)
        server.stop()
    return ok


def full_spool(args: argparse.Namespace, work: Path) -> bool:
    url = f"sqlite:///{work / 'full.db'}"
    server = ServerProcess(url, work)  # not started yet: nobody listens on its ZeroMQ port
    dead = server.zmq
    run = "outage-full"
    spool = work / "spool-full"
    t = Transport(dead, run=run, spool_dir=spool,
                  max_spool_bytes=args.spool_kib * 1024)
    t.hello({"benchmark": "outage-full-spool"})
    sent = {p: 0 for p in PRIORITY_METRIC}
    lat: list[float] = []
    refused_by_queue = 0
    layers = {"rho": {f"blocks.{j}.mlp": 0.5 + j for j in range(16)}}
    try:
        for k in range(args.batches):
            prio = k % 3
            rec = wire.Record(k, time.time(), {PRIORITY_METRIC[prio]: float(k)}, layers)
            t0 = time.perf_counter()
            accepted = t.submit([rec], priority=prio)
            lat.append(time.perf_counter() - t0)
            refused_by_queue += not accepted
            sent[prio] += 1
            if k % 10 == 9:  # a training step's gap: the sender moves the queue to the spool
                t.flush(5)
        t.flush(10)
        c = t.counters()
        lanes = {p: sum(f.stat().st_size for f in spool.rglob(f"p{p}-*.seg"))
                 for p in PRIORITY_METRIC}
        lat.sort()
        print(f"full spool ({args.spool_kib} KiB, no server): {args.batches} batches submitted "
              f"({sent[0]}/{sent[1]}/{sent[2]} at priority 0/1/2)")
        print(f"  submit latency p50 {lat[len(lat) // 2] * 1e6:.0f} µs, p99 "
              f"{lat[int(0.99 * len(lat))] * 1e6:.0f} µs, max {lat[-1] * 1e3:.2f} ms (never "
              "blocks)")
        print(f"  counters: spooled={c.spooled} dropped={c.dropped} (memory queue "
              f"{refused_by_queue}, spool {c.dropped - refused_by_queue}) spool_pending="
              f"{c.spool_pending} spool_bytes={c.spool_bytes}; bytes on disk by priority "
              f"0/1/2: {lanes[0]}/{lanes[1]}/{lanes[2]}")
        server.start()
        try:
            server.wait_ready()
            drained = wait_until(lambda: t.counters().spool_pending == 0
                            and t.counters().in_flight == 0, args.replay_timeout)
            stored = {p: _db_count(url, run, m)[0] for p, m in PRIORITY_METRIC.items()}
        finally:
            t.close(timeout=10)
            server.stop()
    finally:
        t.close(timeout=2)
    c = t.counters()
    print("  after the server appeared: stored by priority 0/1/2: "
          f"{stored[0]}/{sent[0]}, {stored[1]}/{sent[1]}, {stored[2]}/{sent[2]}; acked "
          f"{c.acked}, dropped {c.dropped}" + ("" if drained else " (replay TIMED OUT)"))
    lost = sum(sent.values()) - sum(stored.values())
    # lowest priority first: every eviction takes the lowest lane present at that moment, so the
    # share lost never grows with priority (a later low-priority batch may still fit in the room
    # a whole evicted segment left, so some priority-0 data can survive a loss at priority 1)
    share = {p: 1 - stored[p] / sent[p] for p in PRIORITY_METRIC}
    first_loss_ok = share[0] >= share[1] >= share[2]
    print("  share lost by priority 0/1/2: " + "/".join(f"{share[p]:.1%}" for p in share))
    print(f"  lost {lost} = dropped counter {c.dropped}: {lost == c.dropped}; lowest priority "
          f"dropped first: {first_loss_ok}")
    return drained and lost == c.dropped and first_loss_ok


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--block", type=int, default=50, help="steps per timed block")
    ap.add_argument("--pairs", type=int, default=10, help="pairs of interleaved blocks")
    ap.add_argument("--profile", default="default", help="agent profile (light/default/full)")
    ap.add_argument("--control", action="store_true",
                    help="A/A control: the second copy is not attached either (noise floor)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--batches", type=int, default=3000, help="full-spool run: batches")
    ap.add_argument("--spool-kib", type=int, default=1024, help="full-spool run: spool size")
    ap.add_argument("--replay-timeout", type=float, default=120.0)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.block, args.pairs, args.batches, args.spool_kib = 25, 3, 600, 256
    with tempfile.TemporaryDirectory(prefix="spikewatch-outage-") as tmp:
        ok = step_time_and_replay(args, Path(tmp))
        if not args.control:
            ok &= full_spool(args, Path(tmp))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
