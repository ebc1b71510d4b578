"""attach(trackers=[...]): a tiny model trains with the real agent and transport (to the test
peer standing in for the server), and the same signals are read back from the files the real
libraries wrote: TensorBoard's event file, the offline W&B run's transaction log, MLflow's
tracking store, Lightning's CSV logger."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

import spikewatch
from spikewatch.agent._monitor import Monitor
from spikewatch.protocol import names as nm
from spikewatch.protocol import wire
from spikewatch.protocol.names import EventType
from tests.agent import _delivered as dl
from tests.agent._peer import Peer

STEPS = 40
NAN_AT = 17  # the step whose logged loss is NaN: a nonfinite event the trackers mark
RATIO = nm.STABILITY_RATIO_TWO_SECANT
SESSION = "0" * 32
ALERTS = (wire.Alert(SESSION, "trackers", "predicted_loss_spike", "page", "firing", 21, 1.01,
                     "loss spike predicted"),
          wire.Alert(SESSION, "trackers", "predicted_loss_spike", "page", "resolved", 33, 0.7))
ALERT_KEY = "spikewatch_alert/predicted_loss_spike"


def _train(peer: Peer, trackers: Sequence[object], steps: int = STEPS) -> Monitor:
    """`steps` Adam steps of a small MLP, attached with `trackers`; closed and delivered."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    x, y = torch.randn(48, 6), torch.randint(0, 3, (48,))
    monitor = spikewatch.attach(model, opt, run="trackers", endpoint=peer.endpoint,
                                overhead_budget=math.inf, trackers=trackers)
    for i in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        torch.autograd.backward(loss)
        opt.step()
        monitor.log(loss=float("nan") if i == NAN_AT else loss)
    dl.closed_and_delivered(peer, monitor)
    return monitor


def _expected(peer: Peer, metric: str) -> dict[int, float]:
    """What the server got: `metric` by step (finite values; a NaN compares unequal)."""
    got = {s: v for s, v in dl.by_step(peer, metric).items() if math.isfinite(v)}
    assert len(got) >= STEPS // 2, f"too few {metric} values delivered"
    return got


def _nan_marked(peer: Peer) -> None:
    assert [s for s, _ in dl.events(peer, EventType.NONFINITE)] == [NAN_AT]


def test_tensorboard_log_dir_holds_the_signals_at_their_steps(peer: Peer, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = spikewatch.trackers.TensorBoard(tmp_path / "tb")
    _train(peer, [tracker])
    assert tracker.writer.all_writers is None  # created from a log dir: closed at close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]

    def scalars(tag: str) -> dict[int, float]:
        return {e.step: e.value for e in acc.Scalars(tag)}

    for metric in (nm.LOSS, RATIO):
        got = scalars(f"spikewatch/{metric}")
        for step, value in _expected(peer, metric).items():
            assert got[step] == pytest.approx(value, rel=1e-6), (metric, step)
    assert math.isnan(scalars("spikewatch/loss")[NAN_AT])
    _nan_marked(peer)
    assert scalars("spikewatch_event/nonfinite") == {NAN_AT: 1.0}
    assert any(t.startswith("spikewatch_layer/agent_cadence/") for t in tags)


def test_a_given_summary_writer_is_flushed_not_closed(peer: Peer, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    _train(peer, [writer])  # detected as a SummaryWriter
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()  # flushed at close: readable while the writer is still open
    assert {e.step for e in acc.Scalars("spikewatch/loss")} >= set(_expected(peer, nm.LOSS))
    writer.add_scalar("user/after", 1.0, STEPS)  # still the user's to write to and close
    writer.close()
    acc.Reload()
    assert [e.step for e in acc.Scalars("user/after")] == [STEPS]


def test_wandb_offline_run_history(peer: Peer, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    from tests.agent._wandb_history import history

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="spikewatch-trackers", dir=str(tmp_path))
    try:
        run.log({"user/metric": 1.0})  # the user's own logging is left alone
        _train(peer, [run])  # detected as a wandb run
        spikewatch.trackers.WandB(run).alerts(ALERTS)  # what the drain hands on from the server
        run.log({"user/metric": 2.0})
    finally:
        run.finish()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    rows = history(run_dir)
    ours = [r for r in rows if "spikewatch/step" in r]
    for metric in (nm.LOSS, RATIO):
        got = {r["spikewatch/step"]: r[f"spikewatch/{metric}"] for r in ours
               if f"spikewatch/{metric}" in r}
        for step, value in _expected(peer, metric).items():
            assert got[step] == pytest.approx(value, rel=1e-12), (metric, step)
    _nan_marked(peer)
    assert [r["spikewatch/step"] for r in ours if "spikewatch_event/nonfinite" in r] == [NAN_AT]
    assert [r["user/metric"] for r in rows if "user/metric" in r] == [1.0, 2.0]
    assert [(r["spikewatch/step"], r[ALERT_KEY]) for r in ours if ALERT_KEY in r] == [
        (21, 1.0), (33, 0.0)]


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_mlflow_active_run_and_run_id(peer: Peer, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow import MlflowClient

    # MLflow refuses a new file store: its SQLite store (on SQLAlchemy, which warns about it)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        run_id = run.info.run_id
        _train(peer, [run])  # detected as an MLflow run
        tracker = spikewatch.trackers.MLflow(run)
        tracker.alerts(ALERTS)  # what the drain hands on from the server
        tracker.flush()
        assert mlflow.active_run() is not None  # still the user's run
    client = MlflowClient()
    for metric in (nm.LOSS, RATIO):
        got = {m.step: m.value for m in client.get_metric_history(run_id, f"spikewatch/{metric}")}
        for step, value in _expected(peer, metric).items():
            assert got[step] == pytest.approx(value, rel=1e-12), (metric, step)
    _nan_marked(peer)
    marks = client.get_metric_history(run_id, "spikewatch_event/nonfinite")
    assert [(m.step, m.value) for m in marks] == [(NAN_AT, 1.0)]
    alerts = client.get_metric_history(run_id, ALERT_KEY)
    assert sorted((m.step, m.value) for m in alerts) == [(21, 1.0), (33, 0.0)]
    assert any(k.startswith("spikewatch_layer/") for k in client.get_run(run_id).data.metrics)

    other = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    with Peer() as second:  # no active run: a run id, without the per-layer values
        _train(second, [spikewatch.trackers.MLflow(other, layers=False)])
    loss = {m.step: m.value for m in client.get_metric_history(other, "spikewatch/loss")}
    assert {s: v for s, v in loss.items() if math.isfinite(v)} == _expected(second, nm.LOSS)
    assert not any(k.startswith("spikewatch_layer/") for k in client.get_run(other).data.metrics)


def test_lightning_logger_and_a_callback(peer: Peer, tmp_path: Path) -> None:
    import csv

    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(str(tmp_path), name="run")
    seen: list[wire.Record] = []
    _train(peer, [logger, seen.extend])  # a logger with log_metrics; a callable of the records
    logger.finalize("success")
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    got = {int(r["step"]): float(r["spikewatch/loss"]) for r in rows if r["spikewatch/loss"]}
    for step, value in _expected(peer, nm.LOSS).items():
        assert got[step] == pytest.approx(value, rel=1e-12)
    assert [repr(r) for r in seen] == [repr(r) for r in dl.records(peer)]  # NaN-safe equality


def test_a_tracker_that_raises_is_reported_once_and_disabled(
        peer: Peer, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    healthy: list[wire.Record] = []

    def broken(records: Sequence[wire.Record]) -> None:
        calls.append(len(records))
        raise OSError("disk full")

    with caplog.at_level(logging.WARNING, logger="spikewatch.agent"):
        monitor = _train(peer, [broken, spikewatch.trackers.Callback(healthy.extend)])
    assert len(calls) == 1  # disabled at its first failure
    assert monitor.step == STEPS  # training went on
    assert {r.step for r in healthy} == {r.step for r in dl.records(peer)}  # the other goes on
    warned = [r for r in caplog.records if "tracker callback failed" in r.getMessage()]
    assert len(warned) == 1
    (event,) = [e for _, e in dl.events(peer, EventType.PROBE_ERROR)]
    assert event.data == {"probe": "tracker_callback", "error": "OSError",
                          "message": "disk full", "disabled": True}


def test_bad_trackers_are_refused_at_attach() -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for bad, match in (("runs/x", "list of trackers"), (["runs/x"], "TensorBoard\\(path\\)"),
                       ([42], "got int"), ([object()], "got object")):
        with pytest.raises(TypeError, match=match):
            spikewatch.attach(model, opt, enabled=False, trackers=bad)
    with pytest.raises(ValueError, match="no wandb run"):
        spikewatch.trackers.WandB()


def test_no_tracker_imports_no_tracker_library() -> None:
    code = (
        "import sys, torch, spikewatch, spikewatch.trackers\n"
        "from torch import nn\n"
        "m = nn.Linear(3, 1); opt = torch.optim.Adam(m.parameters())\n"
        "mon = spikewatch.attach(m, opt, endpoint='tcp://127.0.0.1:9', run='quiet')\n"
        "for _ in range(20):\n"
        "    opt.zero_grad(); loss = m(torch.ones(4, 3)).sum(); loss.backward(); opt.step()\n"
        "    mon.log(loss=loss)\n"
        "mon.close(timeout=0.1)\n"
        "bad = [n for n in ('tensorboard', 'torch.utils.tensorboard', 'wandb', 'mlflow',"
        " 'lightning') if n in sys.modules]\n"
        "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr

