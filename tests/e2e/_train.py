"""Training jobs with the real agent attached, and reads back through the server's HTTP API."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

import spikewatch
from spikewatch.monitor.seed_fnn import SeedRun
from spikewatch.server.backtest import spike_onsets

__all__ = ["Trained", "alerts", "series", "train_classifier", "train_seed", "wait_alerts",
           "wait_stored"]

_ROOT = Path(__file__).resolve().parents[2]  # the checkout: `tests` is importable from here


@dataclass(frozen=True)
class Trained:
    """What the training loop saw: loss per step and the wall time each step was logged."""

    run: str
    losses: list[float]
    logged_at: list[float]  # time.time() right after monitor.log(loss) of each step

    @property
    def onsets(self) -> list[int]:
        return spike_onsets(list(enumerate(self.losses)))


def train_seed(endpoint: str, run: str, lr: float, steps: int, *, min_step_s: float = 0.05,
               stop_after_onset: int | None = None) -> Trained:
    """`train_seed_here` in a job process of its own, as a user's job runs: the agent's budget
    times its own work, and a test process that imported other libraries before (wandb's
    tracker test makes every later agent step 1.5-2x as expensive) would stretch the predictor
    of a job that, on its own, predicts at every step."""
    args = {"endpoint": endpoint, "run": run, "lr": lr, "steps": steps, "min_step_s": min_step_s,
            "stop_after_onset": stop_after_onset}
    limit = 60.0 + 3.0 * steps * max(min_step_s, 0.002)
    done = subprocess.run([sys.executable, "-m", "tests.e2e._train", json.dumps(args)],
                          cwd=_ROOT, capture_output=True, text=True, timeout=limit, check=False)
    if done.returncode != 0:
        raise AssertionError(f"the training job failed ({done.returncode}): {done.stderr[-2000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return Trained(out["run"], out["losses"], out["logged_at"])


def train_seed_here(endpoint: str, run: str, lr: float, steps: int, *,
                    min_step_s: float = 0.05, stop_after_onset: int | None = None) -> Trained:
    """The seed FNN (arXiv:2506.04805) trained with Adam(lr), the agent attached as a user
    attaches it: `spikewatch.attach(model, opt, run=..., endpoint=...)`, no closure, the default
    profile and overhead budget.

    `min_step_s` paces the loop to at least that wall time per step, the step time of a small
    real job (this toy steps in ~1 ms; the agent's budget is 1 % of step time). The trajectory
    is chaotic (another CPU puts the first onset at 808 instead of 732), so nothing assumes its
    step numbers: with `stop_after_onset`, training stops that many steps after the first spike
    onset seen in the loss, or after `steps`. One torch thread.
    """
    torch.set_num_threads(1)
    seed = SeedRun(lr=lr)
    monitor = spikewatch.attach(seed.model, seed.optimizer, run=run, endpoint=endpoint)
    losses: list[float] = []
    logged: list[float] = []
    try:
        for _ in range(steps):
            t0 = time.monotonic()
            loss = seed.step()
            monitor.log(loss)
            losses.append(float(loss))
            logged.append(time.time())
            if stop_after_onset is not None and len(losses) % 10 == 0:
                onsets = spike_onsets(list(enumerate(losses)))
                if onsets and len(losses) > onsets[0] + stop_after_onset:
                    break
            rest = min_step_s - (time.monotonic() - t0)
            if rest > 0:
                time.sleep(rest)
    finally:
        monitor.close(timeout=10.0)
    return Trained(run, losses, logged)


def train_classifier(endpoint: str, run: str, steps: int = 40) -> None:
    """A small softmax classifier with logits logged: its run has max_prob and grad_spike_share,
    which the regression FNN cannot have (no logits; its weight matrices are 1×1000)."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 16, generator=gen)
    labels = (x[:, :4].argmax(dim=1)).long()
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()

    def closure() -> torch.Tensor:
        out: torch.Tensor = loss_fn(model(x), labels)
        return out

    # the guard watches (it never acts on this stable run) so its series reach the dashboards
    monitor = spikewatch.attach(model, opt, run=run, endpoint=endpoint, closure=closure,
                                profile="full", overhead_budget=math.inf, guard=True)
    try:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = loss_fn(logits, labels)
            loss.backward()
            opt.step()
            monitor.log(loss, logits=logits.detach())
    finally:
        monitor.close(timeout=10.0)


def wait_stored(http: str, run: str, last_step: int, timeout: float = 30.0) -> None:
    """Wait until the server's API reports `last_step` stored for `run`."""
    deadline = time.monotonic() + timeout
    seen: Any = None
    while time.monotonic() < deadline:
        r = httpx.get(f"{http}/api/v1/runs/{run}", timeout=5.0)
        if r.status_code == 200:
            seen = r.json()["last_step"]
            if seen is not None and seen >= last_step:
                return
        time.sleep(0.2)
    raise AssertionError(f"run {run}: server stored up to step {seen}, expected {last_step}")


def alerts(http: str, run: str) -> list[dict[str, Any]]:
    """GET /api/v1/runs/{run}/alerts."""
    r = httpx.get(f"{http}/api/v1/runs/{run}/alerts", timeout=10.0)
    r.raise_for_status()
    return list(r.json())


def series(http: str, run: str, metric: str) -> dict[int, Any]:
    """GET /api/v1/runs/{run}/series: the stored values of `metric` by step (as served: a
    non-finite value comes as the API writes it)."""
    r = httpx.get(f"{http}/api/v1/runs/{run}/series", params={"metric": metric, "limit": 10000},
                  timeout=10.0)
    r.raise_for_status()
    return {p["step"]: p["value"] for p in r.json()["points"]}


def wait_alerts(http: str, run: str, done: Callable[[list[dict[str, Any]]], bool],
                timeout: float = 15.0) -> list[dict[str, Any]]:
    """The run's alerts once `done(alerts)` holds, or as they are at `timeout`. The server
    evaluates the rules after it commits a batch, so a step already stored may not have its
    alerts persisted yet when a burst of steps came in one commit."""
    deadline = time.monotonic() + timeout
    while True:
        rows = alerts(http, run)
        if done(rows) or time.monotonic() >= deadline:
            return rows
        time.sleep(0.2)


if __name__ == "__main__":  # the job process of `train_seed`: its arguments as JSON, its result
    print(json.dumps(asdict(train_seed_here(**json.loads(sys.argv[1])))))
