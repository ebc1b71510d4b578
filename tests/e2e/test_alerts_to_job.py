"""The server tells the job of its own alerts: a run attached to a real server (the daemon as a
subprocess, SQLite store, a rule file of its own) hears when a rule starts and stops firing, in
`Monitor.firing`, the job's log, a callback, and the trackers' files (TensorBoard's event file,
Lightning's CSV logger), at the steps the server's /alerts API gives."""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from torch import nn

import spikewatch
from spikewatch.protocol import wire
from tests.e2e._procs import Procs, start_daemon

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
RUN = "alerts-to-job"
RULES = {"rules": [{
    "name": "loss_high", "severity": "page",
    "condition": {"metric": "loss", "op": ">", "value": 1.0, "stale_steps": 5},
    "annotations": {"summary": "loss above 1 on {run} at step {step}"},
}]}


def test_the_job_hears_its_alerts_fire_and_resolve(procs: Procs, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from lightning.pytorch.loggers import CSVLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES), encoding="utf-8")
    daemon = start_daemon(procs, tmp_path / "daemon", f"sqlite:///{tmp_path / 'sw.db'}",
                          {"rules": str(rules)})
    heard: list[wire.Alert] = []
    logger = CSVLogger(str(tmp_path), name="csv")
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.randn(16, 4)
    monitor = spikewatch.attach(model, opt, run=RUN, endpoint=daemon.zmq, trackers=[
        spikewatch.trackers.TensorBoard(tmp_path / "tb"), logger,
        spikewatch.trackers.Callback(lambda records: None, on_alert=heard.extend)])
    lowered_at: int | None = None  # the step from which the logged loss is low
    deadline = time.monotonic() + 60
    step = 0
    with caplog.at_level(logging.INFO, logger="spikewatch.agent"):
        # log a high loss until the job holds the alert as firing, then a low one until it hears
        # it resolved (bounded): however slow the server's replies, the job sees both states
        while not (lowered_at is not None and heard and heard[-1].state == "resolved"):
            assert time.monotonic() < deadline, f"alerts heard so far: {heard}"
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
            monitor.log(loss=2.0 if lowered_at is None else 0.1)
            if lowered_at is None and "loss_high" in monitor.firing:
                lowered_at = step + 1
            step += 1
            time.sleep(0.01)  # give the server's reply time to come while steps go on
    assert "loss_high" not in monitor.firing
    monitor.close(timeout=10.0)
    logger.finalize("success")

    r = httpx.get(f"{daemon.http}/api/v1/runs/{RUN}/alerts", timeout=10.0)
    r.raise_for_status()
    (episode,) = [a for a in r.json() if a["rule"] == "loss_high"]
    assert [a.state for a in heard] == ["firing", "resolved"]
    fired_at, resolved_at = heard[0].step, heard[1].step
    assert (episode["fired_step"], episode["resolved_step"]) == (fired_at, resolved_at)
    assert lowered_at is not None
    assert fired_at < lowered_at <= resolved_at
    assert heard[0].severity == "page"
    assert heard[0].summary == f"loss above 1 on {RUN} at step {fired_at}"
    assert any("page loss_high firing" in m for m in caplog.messages)

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("spikewatch_alert/loss_high")] == [
        (fired_at, 1.0), (resolved_at, 0.0)]
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("spikewatch_alert/loss_high")]
    assert [(int(r["step"]), float(r["spikewatch_alert/loss_high"])) for r in rows] == [
        (fired_at, 1.0), (resolved_at, 0.0)]
    assert math.isfinite(heard[0].value)
