"""`make demo`: the whole spikewatch chain on one machine in about a minute.

Starts `spikewatch serve` with its embedded defaults (SQLite file in ./spikewatch-demo/, ZeroMQ on
127.0.0.1:5557 and HTTP on 127.0.0.1:8000, or free ports when those are taken), trains the seed's
spiking network (arXiv:2506.04805: width-1000 ReLU net, Adam lr=0.01) with the agent attached as
a user attaches it (`spikewatch.attach(model, opt, run=..., endpoint=...)`: no closure, the default
profile and 1 % overhead budget), each step paced to at least 50 ms like a small real job's (the
toy steps in ~1 ms, and the budget is a share of step time), and prints every 25 steps what the
*server* knows: loss, stability ratio, ρ, phase and alerts, read back through its HTTP API. At the
end: each loss-spike onset, the page raised before it and its lead in steps, and where to look
next: the run page and the `spikewatch` commands to type. From a terminal the server (and the run
page) then stays up until Ctrl-C; with --no-wait, or when stdin is not a terminal (CI), it is
stopped at once and the demo says so, and how to read the run from its database.

    python scripts/demo.py [--steps 900] [--pace-ms 50] [--dir spikewatch-demo] [--no-wait]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: make the project importable without installing
    sys.path.insert(0, str(ROOT))

from spikewatch.server.process import ServerProcess, free_port  # noqa: E402

RUN = "demo"
PHASES = {1: "stable", 2: "v-decay", 3: "onset", 4: "v-growth", 5: "recovery"}
EVERY = 25  # progress line cadence in steps
LEAD_WINDOW = 150  # a page counts as a warning of an onset at most this many steps before it


class Api:
    """The few reads the demo makes from the server's HTTP API."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=f"{url}/api/v1", timeout=5.0)

    def run(self) -> dict[str, Any] | None:
        r = self.client.get(f"/runs/{RUN}")
        return None if r.status_code == 404 else dict(r.json())

    def latest(self, metric: str, since: int) -> tuple[int, float] | None:
        """(step, value) of the metric's last point at or after step `since`."""
        r = self.client.get(f"/runs/{RUN}/series",
                            params={"metric": metric, "step_min": since, "limit": 10000})
        if r.status_code == 404:
            return None
        pts = r.json()["points"]
        return (int(pts[-1]["step"]), _num(pts[-1]["value"])) if pts else None

    def alerts(self) -> list[dict[str, Any]]:
        r = self.client.get(f"/runs/{RUN}/alerts")
        return [] if r.status_code == 404 else list(r.json())

    def close(self) -> None:
        self.client.close()


def _num(v: Any) -> float:
    """A JSON number or the API's explicit "NaN"/"Infinity"/"-Infinity" strings."""
    return float(v) if not isinstance(v, str) else float(v.replace("Infinity", "inf"))


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec) if math.isfinite(v) else str(v)


def progress_line(api: Api, step: int, loss: float) -> str:
    """One line: the training step and loss, then what the server has stored for the run."""
    run = api.run()
    seen = run["last_step"] if run and run["last_step"] is not None else None
    since = max(0, (seen or 0) - 4 * EVERY)
    vals = {m: api.latest(m, since)
            for m in ("stability_ratio_two_secant", "rho_sampled", "phase")}
    r = vals["stability_ratio_two_secant"][1] if vals["stability_ratio_two_secant"] else None
    rho = vals["rho_sampled"][1] if vals["rho_sampled"] else None
    ph = vals["phase"][1] if vals["phase"] else None
    phase = PHASES.get(int(ph), "?") if ph is not None and math.isfinite(ph) else "—"
    firing = [f"{a['rule']}({a['severity']})" for a in api.alerts() if a["state"] == "firing"]
    edge = "≥1!" if r is not None and r >= 1 else "   "
    return (f"step {step:4d}  loss {_fmt(loss, '.4f'):>8}  │ server@{_fmt_step(seen)}  "
            f"r=η·λ/2 {_fmt(r):>6}{edge} ρ {_fmt(rho):>6}  phase {phase:<8}  "
            f"firing: {', '.join(firing) or '-'}")


def _fmt_step(s: int | None) -> str:
    return f"{s:<4d}" if s is not None else "—   "


def new_pages(api: Api, seen: set[tuple[str, int]]) -> list[dict[str, Any]]:
    """Page alerts that fired since the last call (any state now: they may have resolved)."""
    out = []
    for a in api.alerts():
        if a["severity"] == "page" and a["fired_step"] is not None:
            key = (a["rule"], int(a["fired_step"]))
            if key not in seen:
                seen.add(key)
                out.append(a)
    return sorted(out, key=lambda a: int(a["fired_step"]))


def train(server: ServerProcess, api: Api, steps: int, pace_s: float,
          on_line: Callable[[str], None]) -> list[float]:
    """Train the seed problem with the agent attached, each step taking at least `pace_s`;
    return the loss per step."""
    import torch

    import spikewatch
    from spikewatch.monitor.seed_fnn import SeedRun

    torch.manual_seed(0)
    torch.set_num_threads(1)  # a tiny model: one thread is fastest and leaves a core to the server
    seed = SeedRun(lr=0.01)
    monitor = spikewatch.attach(seed.model, seed.optimizer, run=RUN,
                                endpoint=server.zmq)  # the defaults
    losses: list[float] = []
    paged: set[tuple[str, int]] = set()
    try:
        for step in range(steps):
            t0 = time.monotonic()
            loss = seed.step()
            monitor.log(loss)
            losses.append(float(loss))
            if step % EVERY == 0 or step == steps - 1:
                on_line(progress_line(api, step, losses[-1]))
                for a in new_pages(api, paged):
                    summ = a["annotations"].get("summary", "")
                    on_line(f"   >>> PAGE {a['rule']} fired at step {a['fired_step']} "
                            f"(value {_fmt(_num(a['value']))}): {summ}")
            time.sleep(max(0.0, pace_s - (time.monotonic() - t0)))
    finally:
        monitor.close(timeout=5.0)
    return losses


def wait_stored(api: Api, last_step: int, timeout: float = 15.0) -> bool:
    """Wait until the server has stored the run's last step (the agent drains on a cadence)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.run()
        if run and run["last_step"] is not None and run["last_step"] >= last_step:
            return True
        time.sleep(0.2)
    return False


Alert = dict[str, Any]


def leads(onsets: list[int], alerts: list[Alert]) -> list[tuple[int, list[Alert]]]:
    """For each onset, per page rule the last page fired in the LEAD_WINDOW steps before it.

    The last one per rule, not the first: its lead is a warning a person surely had; earlier pages
    of the same rule in the window may belong to a bump that recovered."""
    pages = sorted((a for a in alerts if a["severity"] == "page" and a["fired_step"] is not None),
                   key=lambda a: int(a["fired_step"]))
    out: list[tuple[int, list[dict[str, Any]]]] = []
    prev = -1
    for onset in onsets:
        last: dict[str, dict[str, Any]] = {}
        for a in pages:
            if max(prev, onset - LEAD_WINDOW) < int(a["fired_step"]) < onset:
                last[a["rule"]] = a
        out.append((onset, sorted(last.values(), key=lambda a: int(a["fired_step"]))))
        prev = onset
    return out


def summary(api: Api, losses: list[float]) -> list[str]:
    """The closing report: the onsets, the pages before them with their lead."""
    from spikewatch.server.backtest import spike_onsets

    alerts = api.alerts()
    onsets = spike_onsets(list(enumerate(losses)))
    lines = ["", "─" * 100,
             f"Loss-spike onsets (loss > 2× its 50-step minimum): {onsets or 'none'}"]
    warned: set[tuple[str, int]] = set()
    for onset, pages in leads(onsets, alerts):
        if not pages:
            lines.append(f"  onset at step {onset}: NO page in the {LEAD_WINDOW} steps before it")
        for p in pages:
            warned.add((p["rule"], int(p["fired_step"])))
            lines.append(f"  onset at step {onset}: page {p['rule']} fired at step "
                         f"{p['fired_step']} → lead {onset - int(p['fired_step'])} steps")
    other = [a for a in alerts if a["severity"] == "page" and a["fired_step"] is not None
             and (a["rule"], int(a["fired_step"])) not in warned]
    if other:
        lines.append("  other pages (an earlier page of the same episode, or a bump that stayed "
                     "under 2×): " + ", ".join(f"{a['rule']}@{a['fired_step']}" for a in other))
    by_sev: dict[str, int] = {}
    for a in alerts:
        by_sev[a["severity"]] = by_sev.get(a["severity"], 0) + 1
    lines.append(f"Alert episodes stored: {len(alerts)} "
                 f"({', '.join(f'{n} {s}' for s, n in sorted(by_sev.items()))})")
    return lines


def where_to_look(server: ServerProcess, db: Path, live: bool) -> list[str]:
    """The run page and the commands a user types: against the running server (`live`), else
    against the database it left (and how to bring the page back)."""
    page = f"{server.http}/runs/{RUN}"
    if live:
        lines = ["", f"The server keeps running (pid {server.pid}) until you press Ctrl-C:",
                 f"  run page   {page}",
                 f"  CLI        export SPIKEWATCH_URL={server.http}   (or --url on each command)"]
    else:
        lines = ["", f"The run is stored in {db}; the server stops now, so read it from there:",
                 f"  CLI        export SPIKEWATCH_DB=sqlite:///{db}   (or --db on each command)"]
    lines += ["             spikewatch runs",
              f"             spikewatch alerts --run {RUN}",
              f"             spikewatch report {RUN}"]
    if live:
        lines += [f"             spikewatch tail {RUN}",
                  f"  API        {server.api_url}/runs/{RUN}  (OpenAPI {server.http}/docs, "
                  f"Prometheus {server.metrics_url})"]
    else:
        lines += [f"  run page   spikewatch serve --http-port {server.http_port}   (reads "
                  f"$SPIKEWATCH_DB), then open {page}",
                  f"             and watch it with spikewatch tail {RUN}"]
    lines.append(f"  server log {server.log}")
    if shutil.which("spikewatch") is None:
        bin_dir = Path(sys.executable).parent
        lines.append(f"  (`spikewatch` is {bin_dir / 'spikewatch'}: activate its environment, "
                     f"e.g. `source {bin_dir / 'activate'}`)")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--steps", type=int, default=900,
                    help="training steps (default 900: the first spike starts near step 730)")
    ap.add_argument("--pace-ms", type=float, default=50.0,
                    help="each step takes at least this long (default 50: a small real job; "
                    "0: as fast as the toy trains, ~1 ms, where the 1%% budget stretches probes)")
    ap.add_argument("--dir", type=Path, default=Path("spikewatch-demo"),
                    help="working directory of the server (default ./spikewatch-demo)")
    ap.add_argument("--no-wait", action="store_true",
                    help="stop the server at the end instead of keeping it (and the run page) up "
                    "until Ctrl-C; the default when stdin is not a terminal (CI)")
    args = ap.parse_args(argv)
    if args.steps < 100:
        ap.error("--steps must be at least 100")
    return args


@contextlib.contextmanager
def _server(args: argparse.Namespace) -> Iterator[ServerProcess]:
    workdir: Path = args.dir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("spikewatch.db*"):  # every demo starts from an empty database
        old.unlink()
    # Its embedded defaults (SQLite spikewatch.db in workdir), in its own process group: the
    # terminal's Ctrl-C goes to the demo, which stops the server.
    server = ServerProcess(None, workdir, zmq_port=free_port(preferred=5557),
                           http_port=free_port(preferred=8000), own_session=True)
    try:
        yield server
    finally:
        server.stop(timeout=20.0)


def _keep_until_ctrl_c(server: ServerProcess) -> None:
    """Hold the server up until Ctrl-C (or until it exits by itself, said plainly)."""
    print(f"\nPress Ctrl-C to stop the server (pid {server.pid}) and leave.", flush=True)
    try:
        while server.running:
            time.sleep(0.5)
        print(f"the server exited by itself; last lines of {server.log}:\n{server.tail(10)}",
              flush=True)
    except KeyboardInterrupt:
        print("\nCtrl-C: stopping the server ...", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wait = not args.no_wait and sys.stdin.isatty()
    t0 = time.monotonic()
    with _server(args) as server:
        print(f"spikewatch demo: starting the server (SQLite {server.workdir / 'spikewatch.db'}, "
              f"ZeroMQ {server.zmq}, HTTP {server.http}) ...", flush=True)
        server.start()
        server.wait_ready(timeout=60.0)
        print(f"server ready after {time.monotonic() - t0:.1f} s. Training the seed's spiking "
              f"network ({args.steps} steps of ≥ {args.pace_ms:g} ms, Adam lr=0.01, agent "
              "attached with its defaults) ...\n"
              "  r = stability ratio η·λ/2 (two-secant, every step; ≥ 1: beyond Adam's edge of "
              "stability), ρ = ‖g‖/‖√v̂‖; the right half is read back from the server's API\n",
              flush=True)
        api = Api(server.http)
        try:
            t1 = time.monotonic()
            losses = train(server, api, args.steps, args.pace_ms / 1e3,
                           lambda s: print(s, flush=True))
            train_s = time.monotonic() - t1
            if not wait_stored(api, args.steps - 1):
                print("warning: the server has not stored the last steps yet", flush=True)
            for line in summary(api, losses):
                print(line)
            print(f"\nTraining took {train_s:.1f} s, the whole demo {time.monotonic() - t0:.1f} s.")
            for line in where_to_look(server, server.workdir / "spikewatch.db", wait):
                print(line, flush=True)
        finally:
            api.close()
        if wait:
            _keep_until_ctrl_c(server)
        pid = server.pid
    why = "" if wait else (" (--no-wait)" if args.no_wait else " (stdin is not a terminal)")
    print(f"\nspikewatch demo: the server (pid {pid}) is stopped{why}; its run page is gone, the "
          "run stays in the database.", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: the server was stopped.", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        sys.exit(1)
