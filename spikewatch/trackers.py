"""Bridges to the experiment trackers a team already watches (`attach(..., trackers=[...])`).

    import spikewatch
    from spikewatch.trackers import TensorBoard

    monitor = spikewatch.attach(model, optimizer, trackers=[TensorBoard("runs/x")])

`TensorBoard` (a `SummaryWriter` or a log dir), `WandB` (a wandb run), `MLflow` (the active run,
a run or a run id), `LogMetrics` (any `log_metrics(metrics, step)`: a Lightning logger) and
`Callback` (any function of the drained records, and optionally of the server's alerts on the
run); subclass `Tracker` for another. The names the values get are in the README ("Experiment
trackers"); the server's alert transitions come as `spikewatch_alert/<rule>` (`alert_metrics`).
The libraries are imported only by the tracker that needs them.
"""

from __future__ import annotations

from spikewatch.agent._tracker_libs import MLflow, TensorBoard, WandB
from spikewatch.agent._trackers import Callback, LogMetrics, Tracker, alert_metrics, metrics

__all__ = ["Callback", "LogMetrics", "MLflow", "TensorBoard", "Tracker", "WandB", "alert_metrics",
           "metrics"]
