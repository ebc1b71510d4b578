"""The trackers of the libraries teams watch: TensorBoard, Weights & Biases and MLflow.

Each imports its library when it is built (never the agent), writes `metrics(record)` at the
record's training step, and leaves the user's writer or run open at `Monitor.close()`: only a
`SummaryWriter` this module created from a log dir is closed.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from typing import Any

from spikewatch.agent._trackers import (
    ALERT_PREFIX,
    EVENT_PREFIX,
    LAYER_PREFIX,
    PREFIX,
    Tracker,
    alert_metrics,
    metrics,
)
from spikewatch.protocol import wire

__all__ = ["MLflow", "TensorBoard", "WandB"]


class TensorBoard(Tracker):
    """Scalars on a TensorBoard `SummaryWriter` (or anything with its `add_scalar`), given one or
    a log dir. A writer made from a log dir is created at the first write and closed at
    `Monitor.close()`; a given one is flushed, not closed."""

    name = "tensorboard"

    def __init__(self, writer_or_log_dir: Any, *, layers: bool = True) -> None:
        self.layers = layers
        self._log_dir: str | None = None
        self._writer: Any = None
        if isinstance(writer_or_log_dir, str | os.PathLike):
            self._log_dir = os.fspath(writer_or_log_dir)
        elif callable(getattr(writer_or_log_dir, "add_scalar", None)):
            self._writer = writer_or_log_dir
        else:
            raise TypeError("TensorBoard(): expected a SummaryWriter or a log dir, got "
                            f"{type(writer_or_log_dir).__name__}")

    @property
    def writer(self) -> Any:
        """The writer (created from the log dir on first use)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self._log_dir)
        return self._writer

    def write(self, records: Sequence[wire.Record]) -> None:
        w = self.writer
        for r in records:
            for k, v in metrics(r, layers=self.layers).items():
                w.add_scalar(k, v, global_step=r.step, walltime=r.time)

    def alerts(self, alerts: Sequence[wire.Alert]) -> None:
        w = self.writer
        for a in alerts:
            for k, v in alert_metrics(a).items():
                w.add_scalar(k, v, global_step=a.step)
                w.add_text(k, f"{a.severity} {a.state} at step {a.step}: {a.summary}",
                           global_step=a.step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None and self._log_dir is not None:
            self._writer.close()
        else:
            self.flush()


class WandB(Tracker):
    """A Weights & Biases run (`wandb.init()`'s; by default the current `wandb.run`). The values
    are logged on an x-axis of their own, `spikewatch/step` (the training step, declared with
    `define_metric`), without `step=`: the run's own step counter advances as with any
    `wandb.log` call, so loggers that log without `step=` (Lightning's, Hugging Face's) are
    unaffected. The run stays open: finishing it is the user's."""

    name = "wandb"
    STEP = PREFIX + "step"

    def __init__(self, run: Any = None, *, layers: bool = True) -> None:
        if run is None:
            import wandb

            run = wandb.run
            if run is None:
                raise ValueError("WandB(): no wandb run: call wandb.init() first or pass the run")
        if not callable(getattr(run, "log", None)):
            raise TypeError(f"WandB(): expected a wandb run, got {type(run).__name__}")
        self.run = run
        self.layers = layers
        self._axis = False

    def write(self, records: Sequence[wire.Record]) -> None:
        if not self._axis:
            self.run.define_metric(self.STEP)
            for prefix in (PREFIX, LAYER_PREFIX, EVENT_PREFIX, ALERT_PREFIX):
                self.run.define_metric(prefix + "*", step_metric=self.STEP)
            self._axis = True
        for r in records:
            self.run.log({**metrics(r, layers=self.layers), self.STEP: r.step})

    def alerts(self, alerts: Sequence[wire.Alert]) -> None:
        for a in alerts:
            self.run.log({**alert_metrics(a), self.STEP: a.step})


_MLFLOW_BAD = re.compile(r"[^/\w.\- :]")  # what MLflow refuses in a metric name


class MLflow(Tracker):
    """An MLflow run: the active one (`mlflow.start_run()`) by default, an `mlflow` Run, or a
    run id, on `tracking_uri` (default: MLflow's current one). Batches are logged
    asynchronously (`MlflowClient.log_batch(synchronous=False)`); the previous drain's are
    awaited at the next one and at close, so an error surfaces there. Characters MLflow refuses
    in a name (a layer's `[`, `]`) become `_`. The run stays open."""

    name = "mlflow"
    BATCH = 1000  # MLflow's most metrics per log_batch

    def __init__(self, run: Any = None, *, tracking_uri: str | None = None,
                 layers: bool = True) -> None:
        import mlflow
        from mlflow import MlflowClient

        if run is None:
            run = mlflow.active_run()
            if run is None:
                raise ValueError("MLflow(): no active MLflow run: call mlflow.start_run() first "
                                 "or pass a run or run id")
        self.run_id: str = run if isinstance(run, str) else run.info.run_id
        self.layers = layers
        self._client = MlflowClient(tracking_uri)
        self._pending: list[Any] = []

    def write(self, records: Sequence[wire.Record]) -> None:
        self._log([(r.step, r.time, metrics(r, layers=self.layers)) for r in records])

    def alerts(self, alerts: Sequence[wire.Alert]) -> None:
        now = time.time()
        self._log([(a.step, now, alert_metrics(a)) for a in alerts])

    def _log(self, rows: list[tuple[int, float, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        self.flush()
        batch = [Metric(_MLFLOW_BAD.sub("_", k), v, int(t * 1000), step)
                 for step, t, values in rows for k, v in values.items()]
        for i in range(0, len(batch), self.BATCH):
            self._pending.append(self._client.log_batch(
                self.run_id, metrics=batch[i:i + self.BATCH], synchronous=False))

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for op in pending:
            if op is not None:
                op.wait()
