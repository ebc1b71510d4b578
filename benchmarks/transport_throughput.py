"""Transport benchmark: what the training thread pays per submit, delivery and replay rates, close
time, and the step-time ratio of a CPU training step with the server absent for the whole run.

    .venv/bin/python benchmarks/transport_throughput.py [--messages 5000]

The peer is the real ROUTER from the tests (decodes with spikewatch.protocol.wire, acks each
message), run in a
separate process so it does not share the GIL with the measured one. Prints numbers; asserts
nothing.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spikewatch.agent._transport import Transport
from spikewatch.protocol import wire
from tests.agent._peer import Peer, free_endpoint


def _record(step: int) -> wire.Record:
    """About what the monitor sends per drained step: ~30 scalars, per-layer values for 24."""
    return wire.Record(
        step=step, time=time.time(),
        scalars={f"s{i}": 0.001 * i * step for i in range(30)},
        layers={"rho": {f"blocks.{j}.mlp": 0.5 + j for j in range(24)}},
    )


def _serve(endpoint: str, stop: mp.synchronize.Event) -> None:
    with Peer(endpoint):
        stop.wait(600)


class _PeerProcess:
    def __init__(self, endpoint: str) -> None:
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.proc = ctx.Process(target=_serve, args=(endpoint, self.stop), daemon=True)

    def __enter__(self) -> _PeerProcess:
        self.proc.start()
        time.sleep(1.0)  # spawn + bind
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.proc.join(10)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _submit_latency(t: Transport, n: int, start: int = 0, pace: float = 0.0) -> list[float]:
    """Submit n messages, timing each call; with back-pressure so the bounded queue never
    overflows (the benchmark measures delivery, not drops) and an optional pause per call."""
    out = []
    for i in range(n):
        rec = [_record(start + i)]
        while t.counters().queued > t.max_queue // 2:
            time.sleep(0.0005)
        t0 = time.perf_counter()
        t.submit(rec)
        out.append(time.perf_counter() - t0)
        if pace:
            time.sleep(pace)
    return out


def _report_latency(label: str, lat: list[float]) -> None:
    us = [x * 1e6 for x in lat]
    print(f"  submit() {label:<28} p50 {_pct(us, 0.5):7.1f} µs  p99 {_pct(us, 0.99):7.1f} µs  "
          f"max {max(us):8.1f} µs")


def _wait(pred: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.005)
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    n = args.messages
    frame = wire.encode(wire.Batch(wire.Header("0" * 32, 1, "bench"), (_record(1),)))
    print(f"message: 1 record, {len(frame)} bytes on the wire; {n} messages per run")

    endpoint = free_endpoint()
    with _PeerProcess(endpoint), tempfile.TemporaryDirectory() as d:
        t = Transport(endpoint, run="bench", spool_dir=Path(d))
        _wait(lambda: t.counters().online, 5)
        lat = _submit_latency(t, 500, pace=0.002)
        _report_latency("(server up, 500/s)", lat)
        t0 = time.perf_counter()
        _submit_latency(t, n, start=500)
        _wait(lambda: t.counters().acked >= n + 500, 120)
        dt = time.perf_counter() - t0
        c = t.counters()
        print(f"  sustained delivery, acked: {n / dt:8.0f} messages/s "
              f"(sent {c.sent}, spooled {c.spooled}, resent {c.resent}, dropped {c.dropped})")
        print(f"  sender thread CPU per message (server up): "
              f"{1e6 * c.sender_cpu_seconds / (n + 500):.0f} µs")
        t.close()

    endpoint = free_endpoint()
    with tempfile.TemporaryDirectory() as d:
        t = Transport(endpoint, run="bench", spool_dir=Path(d))
        lat = _submit_latency(t, 500, pace=0.002)
        _report_latency("(no server, 500/s)", lat)
        t0 = time.perf_counter()
        _submit_latency(t, n - 500, start=500)
        t.flush(60)
        dt = time.perf_counter() - t0
        c = t.counters()
        print(f"  spool write rate: {(n - 500) / dt:8.0f} messages/s")
        print(f"  sender thread CPU per message (no server, spooling): "
              f"{1e6 * c.sender_cpu_seconds / n:.0f} µs")
        print(f"  spooled {c.spooled}, {c.spool_bytes / 1e6:.1f} MB on disk, dropped {c.dropped}")
        with _PeerProcess(endpoint):
            t0 = time.perf_counter()
            _wait(lambda: t.counters().acked >= c.spooled, 120)
            dt = time.perf_counter() - t0
            print(f"  replay after the server appeared: {t.counters().acked / dt:8.0f} messages/s "
                  f"({t.counters().acked} in {dt:.2f} s, includes reconnect)")
            t.close()

    for label, silent in (("no server", False), ("silent server", True)):
        peer = Peer().start() if silent else None
        if peer is not None:
            peer.silent = True
        t = Transport(peer.endpoint if peer else free_endpoint(), run="bench", linger_ms=60000)
        _submit_latency(t, 200)
        time.sleep(0.2)
        t0 = time.perf_counter()
        t.close(timeout=2.0)
        print(f"  close(timeout=2.0) with {label:<14}: {time.perf_counter() - t0:.3f} s")
        if peer is not None:
            peer.stop()

    _outage_step_ratio(args.steps)


def _blocks(step: Callable[[], None], steps: int, t: Transport | None, every: int
            ) -> tuple[float, float, float]:
    """Interleaved blocks of 20 steps, odd ones attached: a submit of the last `every` records
    every `every` steps. Returns (ratio of median block times, plain step time, extra process
    CPU per attached step)."""
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu = {False: 0.0, True: 0.0}
    pending: list[wire.Record] = []
    for block in range(2 * steps // 20):
        use = block % 2 == 1
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(20):
            step()
            if use and t is not None:
                pending.append(_record(block * 20 + i))
                if len(pending) >= every:
                    t.submit(pending)
                    pending = []
        wall[use].append(time.perf_counter() - t0)
        cpu[use] += time.process_time() - c0
    n = 20 * len(wall[True])
    return (statistics.median(wall[True]) / statistics.median(wall[False]),
            statistics.median(wall[False]) / 20, (cpu[True] - cpu[False]) / n)


def _outage_step_ratio(steps: int) -> None:
    try:
        import torch
    except ImportError:
        print("torch not installed: skipping the step-time ratio")
        return
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(),
                                torch.nn.Linear(512, 256))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(64, 256)

    def step() -> None:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    control, plain, _ = _blocks(step, steps, None, 1)
    print(f"  server absent for the whole run, spool on disk; step {plain * 1e3:.2f} ms; "
          f"A/A control (no transport in either arm) {control:.4f}x = the noise floor here")
    for every in (1, 10):
        with tempfile.TemporaryDirectory() as d:
            t = Transport(free_endpoint(), run="bench", spool_dir=Path(d))
            ratio, _, extra = _blocks(step, steps, t, every)
            t.close()
            c = t.counters()
        print(f"  submit every {every:>2} steps ({every} record(s)): step ratio {ratio:.4f}x, "
              f"sender CPU {1e6 * c.sender_cpu_seconds / steps:.0f} µs/step, process CPU "
              f"{extra * 1e6:+.0f} µs/step (spooled {c.spooled}, dropped {c.dropped})")


if __name__ == "__main__":
    main()
