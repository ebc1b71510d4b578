"""The ordinary training loop the agent tests drive."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

import spikewatch
from spikewatch.agent._guard import Guard
from spikewatch.agent._monitor import Monitor
from spikewatch.monitor.seed_fnn import make_seed_problem


def train_on(monitor: Monitor, opt: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor],
             steps: int, before: Callable[[int], None] | None = None,
             evals: Sequence[float] | None = None) -> list[float]:  # fmt: skip
    """`steps` ordinary training steps on `loss_fn()`, each logging its loss (and `evals[i]` as
    its eval_loss where given); `before(i)` runs ahead of step i. The losses, as floats."""
    losses = []
    for i in range(steps):
        if before is not None:
            before(i)
        opt.zero_grad()
        loss = loss_fn()
        torch.autograd.backward(loss)
        opt.step()
        if evals is None:
            monitor.log(loss=loss.detach())
        else:
            monitor.log(loss=loss.detach(), eval_loss=torch.tensor(evals[i]))
        losses.append(float(loss.detach()))
    return losses


def guarded_seed_run(endpoint: str, guard: Guard, lr: float, run: str
                     ) -> tuple[torch.optim.Optimizer, Monitor, Callable[[], torch.Tensor]]:
    """The seed FNN (seed 0, full batch) under Adam at `lr`, attached with `guard` and an
    unlimited budget (a behaviour test: no stretching): (optimizer, monitor, loss function)."""
    torch.manual_seed(0)
    model, x, y = make_seed_problem(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    mon = spikewatch.attach(model, opt, run=run, endpoint=endpoint, guard=guard,
                            overhead_budget=math.inf)
    return opt, mon, lambda: nn.functional.mse_loss(model(x), y)
