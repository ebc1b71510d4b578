"""The seed experiment of arXiv:2506.04805: a width-1000 two-layer ReLU net fitting sin(x)+sin(4x).

Trained full batch with Adam(lr=0.01, betas=(0.9, 0.999)) it spikes repeatedly after a few hundred
steps. Reused by the tests, the demo and the benchmarks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["make_seed_problem"]


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
