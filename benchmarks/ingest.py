"""Sustained ingest into SQLite and PostgreSQL from several concurrent simulated agents.

Runs the real daemon (`spikewatch serve`, default rule pack) as a subprocess; each agent
is a separate process with a real ZeroMQ DEALER socket that keeps up to `--window` batches in
flight and times every acknowledgement (ack = committed). PostgreSQL is a throw-away cluster started
here (needs /usr/lib/postgresql/15/bin; as root it runs as the `postgres` user), durable settings.

    .venv/bin/python benchmarks/ingest.py [--agents 8] [--seconds 10] [--db sqlite,postgres]

Prints points/s, messages/s and ack latency percentiles per database.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._services import DurablePostgres, ServerProcess  # noqa: E402


def agent(endpoint: str, run: str, seconds: float, window: int, records: int, scalars: int,
          layers: int, out: Any) -> None:
    """One simulated agent: stream batches for `seconds`, report acks and latencies."""
    import zmq

    from spikewatch.protocol import wire

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    session = uuid.uuid4().hex
    names = [f"m{i}" for i in range(scalars)]
    layer_names = [f"layer{i}" for i in range(layers)]
    sent: dict[int, float] = {}
    lat: list[float] = []
    seq = step = acked = 0
    per_msg = records * (scalars + 2 * layers)
    start = time.perf_counter()
    end = start + seconds
    while True:
        now = time.perf_counter()
        if now < end and len(sent) < window:
            seq += 1
            recs = []
            for _ in range(records):
                step += 1
                recs.append(wire.Record(step, time.time(),
                                        {n: 1.0 / (step + i) for i, n in enumerate(names)},
                                        {"rho": {ln: 0.5 for ln in layer_names},
                                         "sa_mean": {ln: 0.1 for ln in layer_names}}))
            sock.send(wire.encode(wire.Batch(wire.Header(session, seq, run), tuple(recs))))
            sent[seq] = now
            continue
        if now >= end and not sent:
            break
        if now > end + 30:
            break  # unacknowledged leftovers are reported as such
        if sock.poll(50):
            reply = wire.decode_reply(sock.recv())
            t = time.perf_counter()
            if isinstance(reply, wire.Ack):
                for s in reply.seqs:
                    if s in sent:
                        lat.append(t - sent.pop(s))
                        acked += 1
    out.put({"acked": acked, "points": acked * per_msg, "lat": lat, "unacked": len(sent),
             "elapsed": time.perf_counter() - start})
    sock.close(0)
    ctx.term()


def bench(db_url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with ServerProcess(db_url, workdir) as server:  # ready: migrated and collecting
        q: Any = mp.get_context("spawn").Queue()
        procs = [mp.get_context("spawn").Process(
            target=agent, args=(server.zmq, f"bench{i}", args.seconds, args.window, args.records,
                                args.scalars, args.layers, q)) for i in range(args.agents)]
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        results = [q.get(timeout=args.seconds + 120) for _ in procs]
        wall = time.perf_counter() - t0
        for p in procs:
            p.join(30)
    lat = sorted(x for r in results for x in r["lat"])
    elapsed = max(r["elapsed"] for r in results)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {"points_s": sum(r["points"] for r in results) / elapsed,
            "msgs_s": sum(r["acked"] for r in results) / elapsed,
            "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
            "max": lat[-1] * 1000 if lat else float("nan"),
            "mean": statistics.fmean(lat) * 1000 if lat else float("nan"),
            "unacked": sum(r["unacked"] for r in results), "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--window", type=int, default=8, help="batches in flight per agent")
    ap.add_argument("--records", type=int, default=10, help="steps per batch")
    ap.add_argument("--scalars", type=int, default=20, help="scalars per step")
    ap.add_argument("--layers", type=int, default=8, help="layers (x2 metrics) per step")
    ap.add_argument("--db", default="sqlite,postgres")
    args = ap.parse_args()
    per_msg = args.records * (args.scalars + 2 * args.layers)
    print(f"ingest benchmark: {args.agents} agents x {args.seconds:.0f} s, {per_msg} points per "
          f"batch ({args.records} steps x ({args.scalars} scalars + 2x{args.layers} layer "
          f"values)), window {args.window}; cpu count {os.cpu_count()}")
    print(f"{'db':<10} {'points/s':>10} {'msgs/s':>8} {'p50 ms':>8} {'p90 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8} {'unacked':>7}")
    for kind in args.db.split(","):
        with tempfile.TemporaryDirectory(prefix="spikewatch-bench-") as tmp:
            pg = None
            if kind == "sqlite":
                url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            elif kind == "postgres":
                if not DurablePostgres.available():
                    print(f"{kind:<10} skipped: no PostgreSQL binaries")
                    continue
                pg = DurablePostgres()
                pg.start()
                url = pg.new_database()
            else:
                raise SystemExit(f"unknown db {kind!r}")
            try:
                r = bench(url, args, Path(tmp))
            finally:
                if pg is not None:
                    pg.stop()
        print(f"{kind:<10} {r['points_s']:>10.0f} {r['msgs_s']:>8.1f} {r['p50']:>8.1f} "
              f"{r['p90']:>8.1f} {r['p99']:>8.1f} {r['max']:>8.1f} {r['unacked']:>7}")


if __name__ == "__main__":
    main()
