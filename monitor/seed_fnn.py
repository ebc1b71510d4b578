"""The seed experiment of arXiv:2506.04805: a width-1000 two-layer ReLU net fitting sin(x)+sin(4x).

Trained full batch with Adam(lr=0.01, betas=(0.9, 0.999)) it spikes repeatedly after a few hundred
steps. Reused by the tests, the demo and the benchmarks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SeedRun", "make_seed_problem"]


def make_seed_problem(
    seed: int = 0, width: int = 1000, n: int = 200
) -> tuple[nn.Sequential, Tensor, Tensor]:
    """(model, x, y): float32 net Linear(1, width)–ReLU–Linear(width, 1), x on a grid in [−π, π].

    Deterministic for a given ``seed`` (the model's initialisation is drawn from its own
    generator, leaving the global RNG untouched). Inputs are ``n`` evenly spaced points, shape
    (n, 1); targets y = sin(x) + sin(4x).
    """
    if width < 1 or n < 2:
        raise ValueError(f"need width >= 1 and n >= 2, got width={width}, n={n}")
    x = torch.linspace(-math.pi, math.pi, n, dtype=torch.float32).unsqueeze(1)
    y = torch.sin(x) + torch.sin(4.0 * x)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(1, width), nn.ReLU(), nn.Linear(width, 1))
    finally:
        torch.random.set_rng_state(state)
    return model, x, y


class SeedRun:
    """The seed problem with its full-batch Adam: `step()` trains one step and returns the loss
    (a 0-d tensor, still on its device). Attach spikewatch to `model` and `optimizer` as a
    training script would."""

    def __init__(self, lr: float = 0.01, seed: int = 0) -> None:
        self.model, self.x, self.y = make_seed_problem(seed=seed)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self._loss = nn.MSELoss()

    def step(self) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss: Tensor = self._loss(self.model(self.x), self.y)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return loss.detach()
