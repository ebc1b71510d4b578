"""Lightning integration: `SpikewatchCallback` for ``lightning.Trainer`` (Fabric: `attach_fabric`).

    trainer = lightning.Trainer(callbacks=[SpikewatchCallback()])

No other code is needed. When training starts the callback attaches one monitor per optimizer
in ``trainer.optimizers`` (the first keeps the run name, the others add ".opt1", ".opt2", ...),
with no closure: the zero-extra-pass predictor. It logs one loss per optimizer step:

- the loss is what ``training_step`` returned, undivided: Lightning divides ``outputs["loss"]``
  by ``accumulate_grad_batches``, the callback multiplies it back and logs the mean over the
  step's micro-batches (a device tensor: no synchronisation);
- under manual optimization the loss ``training_step`` returns is logged for every optimizer
  that stepped during the batch (Lightning does not say which loss belongs to which optimizer);
- the run name is the trainer logger's ``<name>-<version>`` (``lightning_logs-version_3``), else
  rank 0's ``<LightningModule class>-<UTC time>``; rank 0's choice is broadcast, so all ranks
  stream into one run;
- over-confidence is read from the optimizer's output module: ``lm_head``, else its last
  ``nn.Linear`` with more than one output (see `logits_module_names`).

`attach` options (``run``, ``endpoint``, ``profile``, ...) or the SPIKEWATCH_* variables win over
these choices; bad ones raise when the callback is built. Once training runs the callback never
raises: a failure is logged once and training goes on. Works with ``lightning`` or
``pytorch_lightning``.
"""

from __future__ import annotations

from typing import Any

import torch

from spikewatch.agent._attach import Monitor
from spikewatch.agent.integrations._common import (
    FailSoft,
    StepLoss,
    agreed_run_name,
    attach_optimizer,
    check_options,
    torch_optimizer,
)
from spikewatch.agent.integrations.fabric import attach_fabric

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:  # the standalone package
    from pytorch_lightning import (  # type: ignore[assignment,unused-ignore]
        Callback,
        LightningModule,
        Trainer,
    )

__all__ = ["SpikewatchCallback", "attach_fabric", "trainer_run_name"]


def trainer_run_name(trainer: Trainer, pl_module: LightningModule) -> str:
    """The run name every rank agrees on (a collective: call it on every rank)."""
    return agreed_run_name(trainer.logger, pl_module, trainer.strategy.broadcast)


class SpikewatchCallback(Callback):  # type: ignore[misc,unused-ignore]
    """Streams the signals of every optimizer of a Lightning training run to spikewatch."""

    def __init__(self, **attach_kwargs: Any) -> None:
        """Keyword arguments are those of `agent.attach` (run, endpoint, profile, ...)."""
        super().__init__()
        check_options(attach_kwargs)
        self.attach_kwargs = attach_kwargs
        self.monitors: list[Monitor] = []
        self.run: str | None = None
        self.logits_module_names: list[str | None] = []
        self._optimizers: list[torch.optim.Optimizer] = []
        self._loss = StepLoss()
        self._stepped: set[int] = set()
        self._soft = FailSoft("Lightning callback")

    @property
    def monitor(self) -> Monitor | None:
        """The first optimizer's monitor (None before training starts and after it ends)."""
        return self.monitors[0] if self.monitors else None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Attach one monitor per optimizer, under the run name all ranks agree on."""
        if self.monitors:
            return
        with self._soft.guard("attach"):
            self.run = trainer_run_name(trainer, pl_module)
            self._optimizers = [torch_optimizer(o) for o in trainer.optimizers]
            if not self._optimizers:
                raise ValueError("the trainer has no optimizer to watch")
            for i, opt in enumerate(self._optimizers):
                monitor, logits = attach_optimizer(pl_module, opt, self.attach_kwargs, self.run, i)
                self.monitors.append(monitor)
                self.logits_module_names.append(logits)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule,
                                 optimizer: Any) -> None:
        """Note which optimizer steps in this batch (its loss is logged at the batch's end)."""
        with self._soft.guard("on_before_optimizer_step"):
            opt = torch_optimizer(optimizer)
            self._stepped.update(i for i, o in enumerate(self._optimizers) if o is opt)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        """Keep the batch's undivided loss; once an optimizer stepped, log the step's mean."""
        if not self.monitors:
            return
        with self._soft.guard("on_train_batch_end"):
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
            self._loss.add(loss, float(scale))
            if not self._stepped:
                return
            step_loss = self._loss.take(torch.mean)
            for i in sorted(self._stepped):
                if step_loss is not None:
                    self.monitors[i].log(loss=step_loss)
            self._stepped.clear()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Flush and close the monitors."""
        self._close()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule,
                     exception: BaseException) -> None:
        """Close the monitors when training fails, keeping what was measured."""
        self._close()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Close the monitors if training ended another way."""
        self._close()

    def _close(self) -> None:
        monitors, self.monitors = self.monitors, []
        for m in monitors:
            with self._soft.guard("close"):
                m.close()
        self._optimizers, self._stepped = [], set()
        self._loss = StepLoss()
