"""Hugging Face integration: `SpikewatchCallback` for ``transformers.Trainer``.

    trainer = Trainer(model, args, train_dataset=ds, callbacks=[SpikewatchCallback()])

No other code is needed. When training starts the callback attaches to the model and the real
``torch.optim`` optimizer under Accelerate's wrapper, with no closure (the zero-extra-pass
predictor), and logs one loss per optimizer step:

- the loss is the Trainer's own: what ``Trainer.training_step`` returns for each micro-batch
  (already normalised for gradient accumulation, so the step's micro-batch losses sum to the
  step's loss). It is there whether the model computed it or a label smoother, a
  ``compute_loss_func`` or an overridden ``compute_loss`` did (``outputs.loss`` is then None),
  and no callback hook is handed it (``on_log`` only sees an average over logging steps). So
  the callback finds the Trainer that calls it (the ``self`` of the frame running
  ``on_train_begin``) and wraps that instance's ``training_step`` for the run, keeping each
  returned loss on the device; the wrapper is removed when training ends;
- the run name is ``args.run_name`` (the same on every rank); without one, rank 0's
  ``<model class>-<UTC time>``, broadcast over torch.distributed, so all ranks share one run;
- over-confidence is read from the output module: ``lm_head``, else the last ``nn.Linear`` with
  more than one output (`logits_module_name`).

`attach` options (``run``, ``endpoint``, ``profile``, ...) or the SPIKEWATCH_* variables win over
these choices; bad ones raise when the callback is built. Once training runs the callback never
raises: a failure is logged once and training goes on.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from spikewatch.agent._attach import Monitor
from spikewatch.agent.integrations._common import (
    FailSoft,
    StepLoss,
    attach_optimizer,
    broadcast_name,
    check_options,
    launch_name,
    log,
    run_name,
    torch_optimizer,
)

__all__ = ["SpikewatchCallback"]

_FRAMES = 12  # how far up the stack the calling Trainer is looked for


def calling_trainer(callback: TrainerCallback) -> Trainer | None:
    """The `Trainer` whose callback handler is calling `callback` now, if any."""
    frame = inspect.currentframe()
    try:
        for _ in range(_FRAMES):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            owner = frame.f_locals.get("self")
            if isinstance(owner, Trainer) and callback in owner.callback_handler.callbacks:
                return owner
        return None
    finally:
        del frame


class SpikewatchCallback(TrainerCallback):  # type: ignore[misc,unused-ignore]
    """Streams the signals of a ``transformers.Trainer`` run to spikewatch."""

    def __init__(self, **attach_kwargs: Any) -> None:
        """Keyword arguments are those of `agent.attach` (run, endpoint, profile, ...)."""
        check_options(attach_kwargs)
        self.attach_kwargs = attach_kwargs
        self.monitor: Monitor | None = None
        self.run: str | None = None
        self.logits_module_name: str | None = None
        self._loss = StepLoss()
        self._wrapped: tuple[Trainer, Any] | None = None  # the trainer and its own attribute
        self._soft = FailSoft("Trainer callback")

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, model: nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        """Attach to the model and the real optimizer; start keeping the Trainer's losses."""
        if self.monitor is not None or model is None or optimizer is None:
            return
        with self._soft.guard("attach"):
            trainer = calling_trainer(self)
            if trainer is None:
                log.warning("spikewatch Trainer callback: not called by a transformers.Trainer; "
                            "no loss is logged")
            else:
                self._keep_losses(trainer)
            self.run = run_name(args.run_name) or broadcast_name(launch_name(model))
            self.monitor, self.logits_module_name = attach_optimizer(
                model, torch_optimizer(optimizer), self.attach_kwargs, self.run, 0)

    def _keep_losses(self, trainer: Trainer) -> None:
        own = trainer.__dict__.get("training_step")
        training_step = trainer.training_step

        @functools.wraps(training_step)
        def keeping_training_step(*args: Any, **kwargs: Any) -> Any:
            loss = training_step(*args, **kwargs)
            with self._soft.guard("training_step"):
                self._loss.add(loss)
            return loss

        trainer.training_step = keeping_training_step  # type: ignore[method-assign]
        self._wrapped = trainer, own

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        """Log the loss of the optimizer step that just ended: its micro-batch losses' sum."""
        with self._soft.guard("on_step_end"):
            loss = self._loss.take(torch.sum)
            if self.monitor is not None and loss is not None:
                self.monitor.log(loss=loss)

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        """Put the Trainer's ``training_step`` back; flush and close the monitor."""
        with self._soft.guard("on_train_end"):
            if self._wrapped is not None:
                trainer, own = self._wrapped
                self._wrapped = None
                if own is None:
                    del trainer.training_step
                else:
                    trainer.training_step = own  # type: ignore[method-assign]
            monitor, self.monitor = self.monitor, None
            if monitor is not None:
                monitor.close()
