"""A small tanh CNN regressing a noisy smooth target of synthetic 8×8 images, full batch, Adam.

The net (Conv(1→4, 3×3)–tanh–Conv(4→4, 3×3)–tanh–AvgPool(2)–Linear(64→1), 253 parameters) has
fewer parameters than the 288 samples, so it cannot fit their label noise (σ = 0.1): the loss
levels off near the least-squares floor σ²·(1 − 253/288) ≈ 1.2e-3, where the gradient vanishes
and Adam's √v̂ decays. (A CNN with more parameters than samples interpolates and drives the loss
towards 0, where a 2× ground truth would be float noise; a smaller one stays on a slow plateau
and never spikes within a CPU budget.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from benchmarks.early_warning.scenarios._base import Task, adam, init_seed, seeded

SAMPLES = 288
SIDE = 8
CHANNELS = 4
NOISE = 0.1


def make_cnn(seed: int) -> nn.Sequential:
    """The CNN, initialised from `seed` (the global RNG is left as it was)."""
    with init_seed(seed):
        return nn.Sequential(
            nn.Conv2d(1, CHANNELS, 3, padding=1), nn.Tanh(),
            nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), nn.Tanh(),
            nn.AvgPool2d(2), nn.Flatten(), nn.Linear(CHANNELS * (SIDE // 2) ** 2, 1),
        )  # fmt: skip


def cnn(lr: float, seed: int, *, beta2: float = 0.999) -> Callable[[], Task]:
    """Full batch, MSE, Adam(lr, β=(0.9, beta2)); data and initialisation from `seed`."""

    def build() -> Task:
        gen = seeded(seed)
        x = torch.randn(SAMPLES, 1, SIDE, SIDE, generator=gen)
        # a smooth target of the image (a fixed random read-out through sin) plus label noise
        w = torch.randn(SIDE * SIDE, generator=gen) / SIDE
        y = torch.sin(2.0 * (x.flatten(1) @ w)).unsqueeze(1)
        y = y + NOISE * torch.randn(SAMPLES, 1, generator=gen)
        model = make_cnn(seed)
        return Task(model, adam(model, lr, betas=(0.9, beta2)),
                    lambda: nn.functional.mse_loss(model(x), y))  # fmt: skip

    return build
