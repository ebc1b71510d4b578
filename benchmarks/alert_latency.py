"""Alert latency: from an observation that crosses a rule to the Alertmanager request.

Prints (1) the rule engine's evaluation cost per observation with the default pack, and (2) the
latency from `RuleEngine.observe()` of the crossing observation, through `Dispatcher.submit()`, to
the POST /api/v2/alerts arriving at a local HTTP endpoint, and, when the prometheus-alertmanager
binary is installed, until the alert is visible in a real Alertmanager's API.

    .venv/bin/python benchmarks/alert_latency.py [--trials 50]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spikewatch.server.notify import AlertmanagerNotifier, Dispatcher
from spikewatch.server.rules import RuleEngine, load_rules
from spikewatch.server.types import AlertState, Observation

HEALTHY = {"loss": 0.07, "stability_ratio": 0.9, "rho": 0.05, "sqrt_v_decay": 1.0,
           "sa_sign_diversity": 0.8, "grad_spike_share": 0.3, "max_prob": 0.6}  # fmt: skip


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def engine_cost(n_runs: int = 100, steps: int = 200) -> None:
    eng = RuleEngine(load_rules())
    t0 = time.perf_counter()
    for step in range(steps):
        for r in range(n_runs):
            eng.observe(Observation(f"run{r}", step, float(step), HEALTHY))
    dt = time.perf_counter() - t0
    n = n_runs * steps
    print(f"engine: {n} observations ({n_runs} runs × {steps} steps, default pack of "
          f"{len(eng.rules)} rules): {1e6 * dt / n:.1f} µs per observation, "
          f"{n / dt:,.0f} observations/s")  # fmt: skip


class Receiver:
    """Timestamps each POST /api/v2/alerts as it arrives."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.event = threading.Event()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                rec.arrivals.append(time.perf_counter())
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                rec.event.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def crossing_latency(url: str, trials: int, visible: Any = None) -> list[float]:
    """Seconds from observe() of the crossing observation to arrival (or visibility)."""
    rules = [r for r in load_rules() if r.name == "nonfinite_loss"]  # fires on one observation
    eng = RuleEngine(rules)
    disp = Dispatcher([AlertmanagerNotifier(url, resend_interval=3600)])
    out = []
    try:
        for i in range(trials):
            run = f"bench-{i}"
            eng.observe(Observation(run, 1, 0.0, {"loss": 1.0}))
            t0 = time.perf_counter()
            for t in eng.observe(Observation(run, 2, 1.0, {"loss": float("nan")})):
                if t.state is AlertState.FIRING:
                    disp.submit(t)
            out.append(visible(run, t0))
    finally:
        disp.close(timeout=5)
    return out


def report(name: str, xs: list[float]) -> None:
    ms = [1e3 * x for x in xs]
    print(f"{name}: n={len(ms)} median {statistics.median(ms):.2f} ms, p90 {pct(ms, 0.9):.2f} ms, "
          f"max {max(ms):.2f} ms")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=50)
    args = ap.parse_args()
    engine_cost()

    rec = Receiver()

    def arrived(run: str, t0: float) -> float:
        n = len(rec.arrivals)
        deadline = time.perf_counter() + 5
        while len(rec.arrivals) == n and time.perf_counter() < deadline:
            rec.event.wait(0.001)
            rec.event.clear()
        return rec.arrivals[-1] - t0

    report("crossing → POST /api/v2/alerts arrives",
           crossing_latency(rec.url, args.trials, arrived))  # fmt: skip

    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        print("real Alertmanager: binary not installed, skipped")
        return
    with tempfile.TemporaryDirectory() as d, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        cfg = Path(d) / "am.yml"
        cfg.write_text("route: {receiver: none}\nreceivers: [{name: none}]\n")
        proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.path={d}/data",
                                 f"--web.listen-address=127.0.0.1:{port}",
                                 "--cluster.listen-address=", "--log.level=error"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            client = httpx.Client(timeout=2.0)
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get(f"{url}/-/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("alertmanager did not start")
                time.sleep(0.05)

            def shown(run: str, t0: float) -> float:
                deadline = time.perf_counter() + 5
                while time.perf_counter() < deadline:
                    r = client.get(f"{url}/api/v2/alerts", params={"filter": f'run="{run}"'})
                    if r.json():
                        return time.perf_counter() - t0
                raise SystemExit(f"alert for {run} never appeared")

            report("crossing → visible in real Alertmanager API (polled)",
                   crossing_latency(url, args.trials, shown))  # fmt: skip
            client.close()
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
