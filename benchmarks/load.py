"""Load: many concurrent simulated agents against the real daemon, and MLflow on the same volume.

For each database (SQLite file, PostgreSQL started here with durable settings):

1. spikewatch: the real daemon (`spikewatch serve`) as a subprocess and `--agents`
   simulated training jobs, each a separate process with the real `agent._transport.Transport`
   (`benchmarks/_sim_agent.py`), streaming batches of `--records` steps (global scalars, two
   per-layer metrics over `--layers` layers, one `--bins`-bin histogram per step) for `--seconds`,
   at most `--window` batches unacknowledged per agent. Reported: sustained points/s (points
   acknowledged within the window / window), ack latency percentiles (submit -> ack, measured in
   the agents), the daemon's peak RSS (VmHWM).
2. MLflow: exactly the same runs, steps and numbers (per-layer values as ``metric/layer``, histogram
   bins as ``sa_hist/layer/bNN`` metrics, since MLflow has no histogram) through
   ``MlflowClient(tracking_uri=...)`` ``log_batch`` into a fresh database of the same kind, one
   writer thread per run (as many concurrent writers as agents) spread over `--mlflow-procs`
   processes. Latency is the duration of one ``log_batch`` call (it returns after the commit).
   If the volume is not written within `--mlflow-max-seconds`, the partial result is reported.

    .venv/bin/python benchmarks/load.py            # 64 agents, SQLite and PostgreSQL
    .venv/bin/python benchmarks/load.py --quick    # a smoke run in well under a minute

Prints one table; asserts nothing.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Worker processes are spawned and re-import this module: keep its top-level imports light
# (benchmarks._services pulls in the server and the test fixtures; it is imported where used).
from benchmarks._sim_agent import Workload, run_agent  # noqa: E402

# Workers fork from a clean forkserver with these modules preloaded: 64 fresh interpreters
# importing them would take most of a 2-core machine for half a minute.
_PRELOAD = ["benchmarks._sim_agent", "spikewatch.agent._transport", "zmq"]
_SPAWN = mp.get_context("forkserver")


@dataclass
class Result:
    system: str
    db: str
    points: int = 0
    seconds: float = 0.0
    lat: list[float] = field(default_factory=list)
    rss: int = 0
    errors: int = 0
    note: str = ""
    sustained: float | None = None  # points/s within a fixed window, if measured that way

    @property
    def rate(self) -> float:
        if self.sustained is not None:
            return self.sustained
        return self.points / self.seconds if self.seconds > 0 else 0.0

    def pct(self, q: float) -> float:
        xs = sorted(self.lat)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else float("nan")


@contextmanager
def _workers(procs: list[Any]) -> Iterator[list[Any]]:
    """Start the worker processes; on leaving, give each 30 s to finish, then kill the rest."""
    try:
        for p in procs:
            p.start()
        yield procs
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()


def _collect(q: Any, n: int, timeout: float, procs: list[Any]) -> list[Any]:
    """`n` items from a multiprocessing queue; SystemExit if a worker died or time ran out."""
    items: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(items) < n:
        try:
            items.append(q.get(timeout=1.0))
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise SystemExit(f"{len(items)}/{n} workers answered; exit codes "
                                 f"{[p.exitcode for p in procs]}") from None
    return items


# --- spikewatch ------------------------------------------------------------------------------


def run_spikewatch(db: str, url: str, args: argparse.Namespace, wl: Workload, workdir: Path
               ) -> tuple[Result, list[tuple[str, int]]]:
    """Run the agents against the daemon; the result and the (run, batches acked) per agent."""
    from benchmarks._services import ServerProcess

    server = ServerProcess(url, workdir)
    server.start()
    try:
        server.wait_ready()
        ready, out, start = _SPAWN.Queue(), _SPAWN.Queue(), _SPAWN.Event()
        with _workers([_SPAWN.Process(target=run_agent, daemon=True,
                                      args=(server.zmq, f"load-{db}-{i:03d}", wl, args.seconds,
                                            args.window, args.interval, ready, start, out))
                       for i in range(args.agents)]) as procs:
            _collect(ready, len(procs), 300, procs)
            stop_sampling = threading.Event()

            def sample() -> None:
                while not stop_sampling.wait(0.5):
                    server.sample_rss()

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            start.set()
            results = _collect(out, len(procs), args.seconds + 240, procs)
            stop_sampling.set()
            sampler.join()
    finally:
        server.stop()
    r = Result("spikewatch", db, rss=server.rss_peak, seconds=args.seconds)
    r.points = sum(x["acked"] for x in results) * wl.points_per_batch
    r.sustained = sum(x["acked_in_window"] for x in results) * wl.points_per_batch / args.seconds
    r.lat = [v for x in results for v in x["lat"]]
    r.errors = sum(x["dropped"] + x["rejected"] + x["submitted"] - x["acked"] for x in results)
    resent = sum(x["resent"] for x in results)
    expected = sum(x["acked"] for x in results) * wl.records
    rows, distinct = _loss_rows(url)
    r.note = (f"{resent} resent; loss rows {rows} for {expected} acked steps, "
              + ("each once" if rows == distinct == expected else "MISMATCH"))
    return r, [(x["run"], x["acked"]) for x in results]


def _loss_rows(url: str) -> tuple[int, int]:
    """(rows, distinct (run, step)) of the `loss` scalar: duplicates or gaps would show here."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT count(*) FROM scalars WHERE metric = 'loss' AND rank = 0")).scalar_one()
            distinct = conn.execute(text(
                "SELECT count(*) FROM (SELECT DISTINCT run_id, step FROM scalars "
                "WHERE metric = 'loss' AND rank = 0) d")).scalar_one()
    finally:
        engine.dispose()
    return int(rows), int(distinct)


# --- MLflow ----------------------------------------------------------------------------------


def _mlflow_metrics(wl: Workload, first_step: int) -> list[Any]:
    from mlflow.entities import Metric

    out = []
    for rec in wl.batch(first_step):
        ts = int(rec.time * 1000)
        out += [Metric(k, v, ts, rec.step) for k, v in rec.scalars.items()]
        out += [Metric(f"{m}/{ln}", v, ts, rec.step)
                for m, per in rec.layers.items() for ln, v in per.items()]
        out += [Metric(f"{m}/{ln}/b{b:02d}", float(c), ts, rec.step)
                for m, per in rec.hists.items() for ln, h in per.items()
                for b, c in enumerate(h.counts)]
    return out


def mlflow_worker(uri: str, experiment: str, jobs: list[tuple[str, int]], wl: Workload,
                  budget: float, ready: Any, start: Any, out: Any) -> None:
    """One process: a writer thread per (run, batches) job, each creating its run and calling
    log_batch once per batch; puts {points, lat, errors, incomplete, rss} on `out`."""
    import logging

    from benchmarks._services import peak_rss_bytes

    logging.getLogger("mlflow").setLevel(logging.CRITICAL)  # lock errors are counted instead
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"MLflow experiment {experiment!r} was not created"
    exp_id = exp.experiment_id
    ready.put(os.getpid())
    start.wait(300)
    deadline = time.monotonic() + budget
    lock = threading.Lock()
    acc: dict[str, Any] = {"points": 0, "lat": [], "errors": 0, "incomplete": 0}

    def retry(fn: Any) -> Any:
        """Call until it succeeds (a user's retry loop); errors counted; None past the cap."""
        while time.monotonic() < deadline:
            try:
                return fn()
            except Exception:  # SQLite: "database is locked" under concurrent writers
                with lock:
                    acc["errors"] += 1
                time.sleep(0.05)
        return None

    def write(run: str, batches: int) -> None:
        created = retry(lambda: client.create_run(exp_id, run_name=run))
        if created is None:
            with lock:
                acc["incomplete"] += batches
            return
        run_id = created.info.run_id
        for k in range(batches):
            if time.monotonic() > deadline:
                with lock:
                    acc["incomplete"] += batches - k
                return
            metrics = _mlflow_metrics(wl, 1 + k * wl.records)
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    client.log_batch(run_id, metrics=metrics)
                except Exception:
                    with lock:
                        acc["errors"] += 1
                    time.sleep(0.05)
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    acc["points"] += len(metrics)
                    acc["lat"].append(dt)
                break
            else:
                with lock:
                    acc["incomplete"] += 1

    threads = [threading.Thread(target=write, args=job, daemon=True) for job in jobs]
    for th in threads:
        th.start()
    for th in threads:
        th.join(budget + 120)
    acc["rss"] = peak_rss_bytes()
    out.put(acc)


def run_mlflow(db: str, uri: str, jobs: list[tuple[str, int]], args: argparse.Namespace,
           wl: Workload, workdir: Path) -> Result:
    """Write the same runs and batches through MLflow's SQL tracking store."""
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    # creates the schema once; artifacts (none are logged) would go to the temporary directory
    MlflowClient(tracking_uri=uri).create_experiment(
        "load", artifact_location=(workdir / "mlflow-artifacts").as_uri())
    nproc = max(1, min(args.mlflow_procs, len(jobs)))
    shares = [jobs[i::nproc] for i in range(nproc)]
    ready, out, start = _SPAWN.Queue(), _SPAWN.Queue(), _SPAWN.Event()
    with _workers([_SPAWN.Process(target=mlflow_worker, daemon=True,
                                  args=(uri, "load", share, wl, args.mlflow_max_seconds, ready,
                                        start, out)) for share in shares]) as procs:
        _collect(ready, nproc, 300, procs)
        t0 = time.perf_counter()
        start.set()
        results = _collect(out, nproc, args.mlflow_max_seconds + 300, procs)
        wall = time.perf_counter() - t0
    r = Result("mlflow", db, seconds=wall, rss=max(x["rss"] for x in results))
    r.points = sum(x["points"] for x in results)
    r.lat = [v for x in results for v in x["lat"]]
    r.errors = sum(x["errors"] for x in results)
    incomplete = sum(x["incomplete"] for x in results)
    target = sum(n for _, n in jobs) * wl.points_per_batch
    r.note = f"{len(jobs)} writer threads in {nproc} procs; RSS: largest writer"
    if incomplete:
        r.note += (f"; PARTIAL {r.points}/{target} points in the {args.mlflow_max_seconds:.0f} s "
                   f"cap, full volume ≈ {target / max(r.rate, 1e-9):.0f} s")
    return r


# --- driver ----------------------------------------------------------------------------------


def _print(results: list[Result]) -> None:
    print(f"\n{'system':<11} {'db':<9} {'points':>9} {'seconds':>8} {'points/s':>9} "
          f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'RSS MiB':>8} {'errors':>6}  note")
    for r in results:
        print(f"{r.system:<11} {r.db:<9} {r.points:>9} {r.seconds:>8.1f} {r.rate:>9.0f} "
              f"{r.pct(0.5):>8.1f} {r.pct(0.9):>8.1f} {r.pct(0.99):>8.1f} "
              f"{r.rss / 2**20:>8.0f} {r.errors:>6}  {r.note}")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--agents", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=8.0, help="streaming time per database")
    ap.add_argument("--window", type=int, default=2, help="unacknowledged batches per agent")
    ap.add_argument("--interval", type=float, default=0.0,
                    help="seconds between one agent's batches (0: as fast as the window allows)")
    ap.add_argument("--records", type=int, default=10, help="steps per batch")
    ap.add_argument("--scalars", type=int, default=20)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--bins", type=int, default=16)
    ap.add_argument("--db", default="sqlite,postgres")
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument("--mlflow-procs", type=int, default=8)
    ap.add_argument("--mlflow-max-seconds", type=float, default=120.0)
    ap.add_argument("--quick", action="store_true",
                    help="8 agents x 3 s, MLflow capped at 10 s: a smoke run")
    args = ap.parse_args()
    from benchmarks._services import DurablePostgres

    if args.quick:
        args.agents, args.seconds, args.mlflow_procs = 8, 3.0, 2
        args.mlflow_max_seconds = 10.0
    wl = Workload(args.records, args.scalars, args.layers, args.bins)
    dbs = [d.strip() for d in args.db.split(",") if d.strip()]
    if unknown := set(dbs) - {"sqlite", "postgres"}:
        raise SystemExit(f"unknown --db {sorted(unknown)}; choose sqlite, postgres")
    if not args.no_mlflow:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("DO_NOT_TRACK", "true")
        try:
            import mlflow.tracking  # noqa: F401
        except ImportError:
            raise SystemExit("MLflow is not installed: pip install -e '.[bench]' "
                             "(or pass --no-mlflow)") from None
        _PRELOAD.extend(["mlflow.tracking", "mlflow.entities"])
    _SPAWN.set_forkserver_preload(_PRELOAD)
    # SIGTERM unwinds like Ctrl-C, so the `finally` blocks stop the workers and the servers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pace = f"one batch per {args.interval:g} s" if args.interval > 0 else "closed loop"
    print(f"load: {args.agents} agents x {args.seconds:.0f} s per database, window "
          f"{args.window}, {pace}; batch = {wl.records} steps x ({wl.scalars} scalars + "
          f"{len(wl.layer_names())} layers x 2 + {wl.bins} histogram bins) = "
          f"{wl.points_per_batch} points; {os.cpu_count()} CPUs", flush=True)
    results: list[Result] = []
    for db in dbs:
        with tempfile.TemporaryDirectory(prefix="spikewatch-load-") as tmp:
            work = Path(tmp)
            pg: DurablePostgres | None = None
            if db == "postgres":
                if not DurablePostgres.available():
                    print("postgres: skipped, no PostgreSQL binaries")
                    continue
                pg = DurablePostgres()
                pg.start()
            try:
                sw_url = pg.new_database() if pg else f"sqlite:///{work / 'spikewatch.db'}"
                t0 = time.perf_counter()
                r, jobs = run_spikewatch(db, sw_url, args, wl, work)
                results.append(r)
                print(f"  spikewatch/{db}: {r.rate:.0f} points/s "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
                if not args.no_mlflow:
                    ml_url = pg.new_database() if pg else f"sqlite:///{work / 'mlflow.db'}"
                    t0 = time.perf_counter()
                    m = run_mlflow(db, ml_url, jobs, args, wl, work)
                    results.append(m)
                    print(f"  mlflow/{db}: {m.rate:.0f} points/s "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)
            finally:
                if pg is not None:
                    pg.stop()
    _print(results)


if __name__ == "__main__":
    main()
