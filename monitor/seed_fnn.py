"""The seed experiment of arXiv:2506.04805: a width-1000 two-layer ReLU net fitting sin(x)+sin(4x).

Trained full batch with Adam(lr=0.01, betas=(0.9, 0.999)) it spikes repeatedly after a few hundred
steps. Reused by the tests, the demo and the benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["make_seed_problem", "spike_onsets"]


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


def spike_onsets(
    losses: Sequence[float], factor: float = 2.0, window: int = 50, gap: int = 50
) -> list[int]:
    """Indices t where loss[t] > factor·min(loss[t−window:t]) starts a new spike episode.

    An episode ends after ``gap`` consecutive steps without the condition; the next onset must
    come after that. Non-finite losses count as spiking and are left out of the reference minimum.
    The first ``window`` steps are skipped.
    """
    if window < 1 or gap < 1 or not factor > 0:
        raise ValueError(f"need window >= 1, gap >= 1, factor > 0; got {window}, {gap}, {factor}")
    onsets: list[int] = []
    quiet = gap  # steps since the last spiking step; an onset needs quiet >= gap
    for t in range(window, len(losses)):
        finite = [v for v in losses[t - window : t] if math.isfinite(v)]
        cur = losses[t]
        spiking = not math.isfinite(cur) or (bool(finite) and cur > factor * min(finite))
        if spiking:
            if quiet >= gap:
                onsets.append(t)
            quiet = 0
        else:
            quiet += 1
    return onsets
