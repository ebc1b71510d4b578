"""Lightning Fabric integration: `attach_fabric`, one line after ``fabric.setup``.

    model, optimizer = fabric.setup(model, optimizer)
    monitor = attach_fabric(fabric, model, optimizer)   # nothing else: the loss is logged for you

Fabric has no training loop to hook, so the loss is taken where Fabric sees it: every tensor
passed to ``fabric.backward`` is kept (on the device) and, when a watched optimizer steps, their
sum is logged as that step's loss. The sum is the loss the step's gradient belongs to: under
gradient accumulation the usual ``fabric.backward(loss / k)`` on each micro-batch sums to the
mean undivided loss. With several optimizers (call it once for each) the losses backpropagated
since the last step of any of them go to the one that steps next. The run name is the first
logger's ``<name>-<version>``, else rank 0's ``<model class>-<UTC time>``, broadcast to all
ranks; the second and later optimizers add ".opt1", ".opt2", ... The output module for the
over-confidence probe is found as in the Trainer callback. No closure: the zero-extra-pass
predictor. Bad `attach` options raise here; afterwards nothing raises into training.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch
from torch import nn

from spikewatch.agent._attach import Monitor
from spikewatch.agent.integrations import _common as common

__all__ = ["attach_fabric"]


class _Ledger:
    """The losses one Fabric backpropagated since a watched optimizer last stepped."""

    def __init__(self, fabric: Any, run: str) -> None:
        self.run = run
        self.optimizers = 0
        self.loss = common.StepLoss()
        self.soft = common.FailSoft("Fabric")
        backward = fabric.backward

        @functools.wraps(backward)
        def recording_backward(tensor: Any, *args: Any, **kwargs: Any) -> Any:
            with self.soft.guard("backward"):
                self.loss.add(tensor)
            return backward(tensor, *args, **kwargs)

        fabric.backward = recording_backward


_ledgers: weakref.WeakKeyDictionary[Any, _Ledger] = weakref.WeakKeyDictionary()


def attach_fabric(fabric: Any, model: nn.Module, optimizer: Any, **attach_kwargs: Any
                  ) -> Monitor:
    """Attach spikewatch to a Fabric-set-up model and optimizer; returns the `Monitor`.

    Keyword arguments are those of `agent.attach`; they (or the SPIKEWATCH_* variables) win over
    the run name and output module found here. Call it on every rank.
    """
    common.check_options(attach_kwargs)
    module = getattr(model, "module", model)  # Fabric's wrapper keeps the user's module
    if not isinstance(module, nn.Module):
        raise TypeError(f"attach_fabric(): model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    opt = common.torch_optimizer(optimizer)
    ledger = _ledgers.get(fabric)
    if ledger is None:
        logger = fabric.loggers[0] if fabric.loggers else None
        run = common.agreed_run_name(logger, module, fabric.broadcast)
        ledger = _ledgers[fabric] = _Ledger(fabric, run)
    monitor, _ = common.attach_optimizer(module, opt, attach_kwargs, ledger.run, ledger.optimizers)
    ledger.optimizers += 1

    def log_step_loss(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with ledger.soft.guard("optimizer step"):  # after the monitor's own post-step hook
            loss = ledger.loss.take(torch.sum)
            if loss is not None:
                monitor.log(loss=loss)

    opt.register_step_post_hook(log_step_loss)
    return monitor
