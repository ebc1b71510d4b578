"""Adam on an ill-conditioned quadratic: the cleanest instance of the preconditioner-decay spike."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmarks.early_warning.scenarios._base import Task, adam, seeded


class Quadratic(nn.Module):
    """½ Σ λ_i θ_i² + floor, eigenvalues log-spaced over `cond` (the floor keeps the 2× ground
    truth about the excursion, not about float noise around zero)."""

    def __init__(self, dim: int, cond: float, seed: int, floor: float = 1e-3) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.randn(dim, generator=seeded(seed)))
        self.register_buffer("lam", torch.logspace(0.0, math.log10(cond), dim))
        self.floor = floor

    def forward(self) -> Tensor:
        lam: Tensor = self.lam  # type: ignore[assignment]
        return 0.5 * (lam * self.theta**2).sum() + self.floor


def quadratic(lr: float, eps: float, beta2: float, seed: int) -> Callable[[], Task]:
    """20 dimensions, λ log-spaced over 1..100, Adam(lr, β=(0.9, beta2), eps)."""

    def build() -> Task:
        model = Quadratic(dim=20, cond=100.0, seed=seed)
        return Task(model, adam(model, lr, betas=(0.9, beta2), eps=eps), model)

    return build
