"""The ordinary training loop the agent tests drive."""

from __future__ import annotations

from collections.abc import Callable

import torch

from spikewatch.agent._monitor import Monitor


def train_on(monitor: Monitor, opt: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor],
             steps: int, before: Callable[[int], None] | None = None) -> None:
    """`steps` ordinary training steps on `loss_fn()`, each logging its loss; `before(i)` runs
    ahead of step i."""
    for i in range(steps):
        if before is not None:
            before(i)
        opt.zero_grad()
        loss = loss_fn()
        torch.autograd.backward(loss)
        opt.step()
        monitor.log(loss=loss)
