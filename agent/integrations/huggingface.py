"""Hugging Face integration: `SpikewatchCallback` for ``transformers.Trainer``.

    trainer = Trainer(model, args, train_dataset=ds, callbacks=[SpikewatchCallback(run="r")])

The loss of each training forward pass is taken from the model output (``outputs.loss``, a device
tensor) by a forward hook, and logged at the end of every optimizer step; over-confidence comes
from ``outputs.logits`` on the steps it is due. The optimizer Accelerate wraps is unwrapped, so the
agent's step hooks sit on the real ``torch.optim`` optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from spikewatch.agent._attach import Monitor, attach

__all__ = ["SpikewatchCallback"]


def _unwrap(optimizer: Any) -> torch.optim.Optimizer:
    opt = optimizer
    for _ in range(4):
        if isinstance(opt, torch.optim.Optimizer) and not hasattr(opt, "optimizer"):
            break
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            break
        opt = inner
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"SpikewatchCallback: cannot find a torch optimizer in {type(optimizer)}")
    return opt


class SpikewatchCallback(TrainerCallback):  # type: ignore[misc,unused-ignore]
    """Streams the signals of a ``transformers.Trainer`` run to spikewatch."""

    def __init__(self, **attach_kwargs: Any) -> None:
        """Keyword arguments are those of `agent.attach` (run, endpoint, profile, ...)."""
        self.attach_kwargs = attach_kwargs
        self.monitor: Monitor | None = None
        self._loss: torch.Tensor | None = None
        self._hook: Any = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, model: nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        """Attach to the model and the (unwrapped) optimizer; hook the loss."""
        if self.monitor is not None or model is None or optimizer is None:
            return
        kw = {"logits_module": model, **self.attach_kwargs}
        self.monitor = attach(model, _unwrap(optimizer), **kw)
        self._hook = model.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: Any, output: Any) -> None:
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, dict):
            loss = output.get("loss")
        if module.training and isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._loss = loss.detach()

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        """Log the last training loss of the optimizer step that just ended."""
        if self.monitor is not None and self._loss is not None:
            self.monitor.log(loss=self._loss)
            self._loss = None

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        """Flush and close the monitor; remove the loss hook."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
