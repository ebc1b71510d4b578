"""The vocabulary of the scenarios: `Task` (one built training problem) and `Scenario` (a named,
deterministic recipe for one), plus the small helpers every family shares."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

Schedule = Callable[[int, torch.optim.Optimizer], None]
"""Called with (step, optimizer) after backward and before `optimizer.step()` of every step."""


@dataclass
class Task:
    """One built scenario, ready to train.

    The training loop is, for t in range(steps): `batch(t)` (select step t's minibatch, if any),
    `eval_loss()` under no_grad (if any, not timed), then zero_grad, `loss = closure()`,
    `loss.backward()`, `schedule(t, optimizer)` (if any), `optimizer.step()`.

    - `closure` re-evaluates the loss on the *current* batch without calling backward (what a
      user hands to `agent.attach(closure=...)`); it is also the training loss.
    - `batch(t)` makes step t's minibatch current (minibatch scenarios; None: full batch). It draws
      from the task's own seeded generator, so two builds of a scenario see the same batches.
    - `eval_loss()` is the ground-truth loss of a minibatch scenario: the full-data loss or the
      loss on a fixed held-out batch. Spikes are scored on it, not on the noisy batch loss.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    closure: Callable[[], Tensor]
    schedule: Schedule | None = None
    batch: Callable[[int], None] | None = None
    eval_loss: Callable[[], Tensor] | None = None


@dataclass(frozen=True)
class Scenario:
    """A named, deterministic training problem. `control` marks a run expected not to spike."""

    name: str
    family: str
    control: bool
    steps: int
    build: Callable[[], Task] = field(repr=False, compare=False)
    minibatch: bool = False  # ground truth is Task.eval_loss (checked by the tests)


def seeded(seed: int) -> torch.Generator:
    """A fresh CPU generator; every random draw of a scenario comes from one of these."""
    return torch.Generator().manual_seed(seed)


@contextmanager
def init_seed(seed: int) -> Iterator[None]:
    """Seed the global RNG for a model's initialisation, restoring the caller's state after."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        yield
    finally:
        torch.random.set_rng_state(state)


def adam(model: nn.Module, lr: float, betas: tuple[float, float] = (0.9, 0.999),
         eps: float = 1e-8) -> torch.optim.Adam:  # fmt: skip
    """Adam over all of `model`'s parameters."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=betas, eps=eps)


def at(step: int, *, lr: float | None = None, beta1: float | None = None,
       momentum: float | None = None, rescale: bool = False) -> Schedule:  # fmt: skip
    """Set group hyperparameters once, before optimizer step `step`.

    `beta1` changes Adam's β1, `momentum` SGD's; with `rescale` the momentum buffer (Adam's
    exp_avg, SGD's momentum_buffer) is multiplied by (1 − old)/(1 − new) at the change.
    """

    def schedule(t: int, opt: torch.optim.Optimizer) -> None:
        if t != step:
            return
        for g in opt.param_groups:
            if lr is not None:
                g["lr"] = lr
            if beta1 is not None:
                old = g["betas"][0]
                g["betas"] = (beta1, g["betas"][1])
                if rescale:
                    _scale_state(opt, g, "exp_avg", (1.0 - old) / (1.0 - beta1))
            if momentum is not None:
                old = g["momentum"]
                g["momentum"] = momentum
                if rescale:
                    _scale_state(opt, g, "momentum_buffer", (1.0 - old) / (1.0 - momentum))

    return schedule


def _scale_state(opt: torch.optim.Optimizer, group: dict[str, object], key: str,
                 factor: float) -> None:  # fmt: skip
    params = group["params"]
    assert isinstance(params, list)
    with torch.no_grad():
        for p in params:
            buf = opt.state.get(p, {}).get(key)
            if isinstance(buf, Tensor):
                buf.mul_(factor)
