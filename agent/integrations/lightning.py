"""Lightning integration: `SpikewatchCallback` attaches spikewatch to the LightningModule.

    trainer = lightning.Trainer(callbacks=[SpikewatchCallback(run="my-run")])

Lightning calls ``optimizer.step(closure=...)``; the agent measures once the closure has produced
the gradients, so nothing else is needed. Works with ``lightning`` or ``pytorch_lightning``.
"""

from __future__ import annotations

from typing import Any

import torch

from spikewatch.agent._attach import Monitor, attach

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:  # the standalone package
    from pytorch_lightning import (  # type: ignore[assignment,unused-ignore]
        Callback,
        LightningModule,
        Trainer,
    )

__all__ = ["SpikewatchCallback"]


class SpikewatchCallback(Callback):  # type: ignore[misc,unused-ignore]
    """Streams the signals of the first optimizer of a Lightning training run to spikewatch."""

    def __init__(self, **attach_kwargs: Any) -> None:
        """Keyword arguments are those of `agent.attach` (run, endpoint, profile, ...)."""
        super().__init__()
        self.attach_kwargs = attach_kwargs
        self.monitor: Monitor | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Attach to the module and its first optimizer."""
        if self.monitor is not None:
            return
        optimizers = trainer.optimizers
        if not optimizers:
            raise ValueError("SpikewatchCallback: the trainer has no optimizer to watch")
        opt = optimizers[0]
        opt = getattr(opt, "optimizer", opt) if not isinstance(opt, torch.optim.Optimizer) else opt
        self.monitor = attach(pl_module, opt, **self.attach_kwargs)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        """Log the batch's training loss (a device tensor: no synchronisation)."""
        if self.monitor is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor | float):
            self.monitor.log(loss=loss)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Flush and close the monitor."""
        self._close()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule,
                     exception: BaseException) -> None:
        """Close the monitor when training fails, keeping what was measured."""
        self._close()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Close the monitor if training ended another way."""
        self._close()

    def _close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
