"""Bridges to the experiment tracker a team already watches: the drained records, written again.

`attach(..., trackers=[...])` hands every drained batch of records (host floats already: no
host-device synchronisation of its own) to each tracker, in the drain (`agent._drain`), after the
transport has them. A tracker that raises is reported once (a log warning and a PROBE_ERROR
event, probe `tracker_<name>`) and disabled; training never sees the error. The libraries are
imported by the trackers that need them (`agent._tracker_libs`), never by the agent itself.

Names (`metrics`): `spikewatch/<metric>` for a step's scalars, `spikewatch_layer/<metric>/<layer>`
for per-layer values, `spikewatch_event/<type>` = how many events of that type the step had
(loss_spike, nonfinite, prediction_degraded, guard_action, ...). Layer values have a section of
their own because some metrics are both a scalar and a per-layer value (agent_overhead), which a
path-like store (MLflow's file store) cannot hold under one name.

Alerts (`alert_metrics`): when the server tells the run that one of its alerts started or stopped
firing, `spikewatch_alert/<rule>` is written at the alert's step: 1 firing, 0 resolved (the
TensorBoard tracker adds the summary as text), so a page shows on the tracker's own step axis.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Sequence

from spikewatch.protocol import wire
from spikewatch.protocol.names import EventType

__all__ = ["Callback", "LogMetrics", "Tracker", "Trackers", "alert_metrics", "as_tracker",
           "metrics"]

log = logging.getLogger("spikewatch.agent")
PREFIX = "spikewatch/"
LAYER_PREFIX = "spikewatch_layer/"
EVENT_PREFIX = "spikewatch_event/"
ALERT_PREFIX = "spikewatch_alert/"
_ERR_LEN = 300


def metrics(record: wire.Record, *, layers: bool = True) -> dict[str, float]:
    """One record's values under the trackers' names (module docstring). Histograms and the
    partial sums of a sharded optimizer are not written: the server combines them."""
    out = {PREFIX + k: v for k, v in record.scalars.items()}
    if layers:
        for k, per_layer in record.layers.items():
            out.update({f"{LAYER_PREFIX}{k}/{n}": v for n, v in per_layer.items()})
    for e in record.events:
        key = EVENT_PREFIX + e.type
        out[key] = out.get(key, 0.0) + 1.0
    return out


def alert_metrics(alert: wire.Alert) -> dict[str, float]:
    """An alert transition under the trackers' names: 1 firing, 0 resolved."""
    return {ALERT_PREFIX + alert.rule: 1.0 if alert.state == "firing" else 0.0}


class Tracker:
    """Something the drained records are also written to. Subclass it and override `write`
    (and `alerts` to hear of the server's alerts); `flush` and `close` are called at
    `Monitor.close()` (`close` flushes unless the tracker owns what it writes to)."""

    name = "tracker"

    def write(self, records: Sequence[wire.Record]) -> None:
        """Write one drain's records (in step order; a step may come in more than one)."""
        raise NotImplementedError

    def alerts(self, alerts: Sequence[wire.Alert]) -> None:
        """Write the server's alerts on this run that started or stopped firing (default:
        nothing)."""

    def flush(self) -> None:
        """Make what was written durable (default: nothing to do)."""

    def close(self) -> None:
        """The monitor is done with this tracker: flush; close only what the tracker created."""
        self.flush()


class Callback(Tracker):
    """Calls `fn(records)` with each drain's `spikewatch.protocol.wire.Record`s, and
    `on_alert(alerts)` with the server's `wire.Alert`s when one of the run's alerts starts or
    stops firing."""

    name = "callback"

    def __init__(self, fn: Callable[[Sequence[wire.Record]], object], *,
                 on_alert: Callable[[Sequence[wire.Alert]], object] | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"Callback(): fn must be callable, got {type(fn).__name__}")
        if on_alert is not None and not callable(on_alert):
            raise TypeError(f"Callback(): on_alert must be callable, got "
                            f"{type(on_alert).__name__}")
        self.fn = fn
        self.on_alert = on_alert

    def write(self, records: Sequence[wire.Record]) -> None:
        self.fn(records)

    def alerts(self, alerts: Sequence[wire.Alert]) -> None:
        if self.on_alert is not None:
            self.on_alert(alerts)


class LogMetrics(Tracker):
    """Calls `log_metrics(metrics, step)` once per record with `metrics(record)`: the shape of
    Lightning's `Logger.log_metrics` (`LogMetrics(trainer.logger.log_metrics)`, or pass the
    logger itself) and of any function a training script logs through."""

    name = "log_metrics"

    def __init__(self, log_metrics: Callable[[dict[str, float], int], object], *,
                 layers: bool = True) -> None:
        if not callable(log_metrics):
            raise TypeError("LogMetrics(): log_metrics must be callable, got "
                            f"{type(log_metrics).__name__}")
        self.log_metrics = log_metrics
        self.layers = layers

    def write(self, records: Sequence[wire.Record]) -> None:
        for r in records:
            self.log_metrics(metrics(r, layers=self.layers), r.step)

    def alerts(self, alerts: Sequence[wire.Alert]) -> None:
        for a in alerts:
            self.log_metrics(alert_metrics(a), a.step)


def _instance(obj: object, module: str, cls: str) -> bool:
    """`isinstance(obj, module.cls)` without importing `module` (an object of a class from a
    module nobody imported cannot exist)."""
    m = sys.modules.get(module)
    return m is not None and isinstance(obj, getattr(m, cls, ()))


def as_tracker(obj: object) -> Tracker:
    """A `Tracker` for what `attach(trackers=[...])` was given: a Tracker; a TensorBoard
    `SummaryWriter`; a `wandb` run; an MLflow run (`mlflow.start_run()`'s); an object with a
    `log_metrics(metrics, step)` method (a Lightning logger); or a callable taking the records.
    Strings are refused: a log dir and a library name would read alike
    (`spikewatch.trackers.TensorBoard("runs/x")` says which)."""
    from spikewatch.agent import _tracker_libs as libs

    if isinstance(obj, Tracker):
        return obj
    if _instance(obj, "torch.utils.tensorboard.writer", "SummaryWriter"):
        return libs.TensorBoard(obj)
    if _instance(obj, "wandb.sdk.wandb_run", "Run"):
        return libs.WandB(obj)
    if _instance(obj, "mlflow.entities.run", "Run"):
        return libs.MLflow(obj)
    log_metrics = getattr(obj, "log_metrics", None)
    if callable(log_metrics):
        return LogMetrics(log_metrics)
    if callable(obj) and not isinstance(obj, type):
        return Callback(obj)
    raise TypeError(
        f"attach(): a tracker must be a spikewatch.trackers.Tracker, a SummaryWriter, a wandb "
        f"run, an MLflow run, a logger with log_metrics(metrics, step) or a callable taking the "
        f"records; got {type(obj).__name__} (a log dir: spikewatch.trackers.TensorBoard(path))")


class Trackers:
    """The monitor's trackers: each drain's records go to every tracker still enabled."""

    def __init__(self, trackers: Iterable[Tracker],
                 report: Callable[[wire.Event], None]) -> None:
        self.live = list(trackers)
        self._report = report  # puts an event in the next drain

    def __bool__(self) -> bool:
        return bool(self.live)

    def write(self, records: Sequence[wire.Record]) -> None:
        """Write `records` to each tracker; one that raises is reported and disabled."""
        if records:
            self._each(lambda t: t.write(records))

    def alerts(self, alerts: Sequence[wire.Alert]) -> None:
        """Write the server's alert transitions to each tracker, like `write`."""
        if alerts:
            self._each(lambda t: t.alerts(alerts))

    def _each(self, call: Callable[[Tracker], object]) -> None:
        for t in list(self.live):
            try:
                call(t)
            except Exception as e:
                self.live.remove(t)
                log.warning("spikewatch: tracker %s failed and is disabled: %s: %s", t.name,
                            type(e).__name__, e)
                self._report(wire.Event(EventType.PROBE_ERROR.value, {
                    "probe": f"tracker_{t.name}", "error": type(e).__name__,
                    "message": str(e)[:_ERR_LEN], "disabled": True}))

    def close(self) -> None:
        """Flush every tracker (close those it created); never raises."""
        for t in self.live:
            try:
                t.close()
            except Exception as e:
                log.warning("spikewatch: tracker %s failed to close: %s: %s", t.name,
                            type(e).__name__, e)
        self.live.clear()

