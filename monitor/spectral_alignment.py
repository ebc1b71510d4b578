"""Spectral alignment (arXiv:2510.04202): how layer inputs line up with W's principal direction.

For a linear map y = x Wᵀ with W of shape out×in, the input-space principal direction is the right
singular vector v₁ (torch.linalg.svd(W).Vh[0]). SA_i = cos(x_i, v₁) per input row. A collapse of
the sign diversity 1 − |p₊ − p₋| (nearly all rows on one side of v₁) precedes loss explosion.

v₁'s sign is arbitrary: the sign diversity is invariant to it; the mean and the histogram are
reported in the orientation of the tracked v₁, which warm starting keeps continuous across calls.
All results stay on the input's device (no host synchronisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spikewatch.monitor._power import top_right_singular

__all__ = ["SAResult", "SpectralAlignment", "declared_linear_weight", "sample_rows"]


@dataclass(frozen=True, slots=True)
class SAResult:
    """One measurement. Tensors are 0-d unless noted; `hist` has `bins` counts over [-1, 1]."""

    hist: torch.Tensor  # int64 (bins,): counts of finite rows per fixed-width bin
    nonfinite: torch.Tensor  # int64: rows whose cosine is NaN/Inf (non-finite inputs or weight)
    rows: int  # rows measured (after sampling)
    mean: torch.Tensor  # fp32: mean cosine over finite rows (NaN if none)
    sign_diversity: torch.Tensor  # fp32: 1 − |p₊ − p₋| over finite rows (NaN if none)
    sigma1: torch.Tensor  # fp32: σ₁ estimate of W


def declared_linear_weight(module: nn.Module) -> torch.Tensor:
    """The out×in weight of an nn.Linear or of any module the user declares as linear."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        shape = None if not isinstance(weight, torch.Tensor) else tuple(weight.shape)
        raise ValueError(
            f"{type(module).__name__} has no 2-D `weight` (out×in) to declare as linear "
            f"(weight shape: {shape})"
        )
    return weight


def sample_rows(x: torch.Tensor, max_rows: int) -> torch.Tensor:
    """Flatten leading dims to rows; keep at most `max_rows`, evenly strided (deterministic)."""
    rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[0]
    if n <= max_rows:
        return rows
    idx = torch.arange(max_rows, device=x.device) * n // max_rows
    return rows.index_select(0, idx)


class SpectralAlignment:
    """Tracks v₁ of one layer by warm-started power iteration and measures SA of its inputs."""

    def __init__(self, bins: int = 20, max_rows: int = 4096, iters: int = 3, seed: int = 0) -> None:
        if bins < 2 or max_rows < 1 or iters < 1:
            raise ValueError("need bins >= 2, max_rows >= 1, iters >= 1")
        self.bins = bins
        self.max_rows = max_rows
        self.iters = iters
        self.seed = seed
        self.v1: torch.Tensor | None = None

    def update(self, weight: torch.Tensor, inputs: torch.Tensor) -> SAResult:
        """Refresh v₁ from `weight` (out×in) and measure the rows of `inputs` (..., in)."""
        v1, sigma = self.refresh(weight)
        return self.summarise(self.cosines(inputs, v1), sigma)

    def refresh(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight half: v₁ (fp32, (in,)) and σ₁ of `weight` (out×in), warm-started."""
        if weight.ndim != 2:
            raise ValueError(f"weight must be out×in, got shape {tuple(weight.shape)}")
        v1, sigma = top_right_singular(weight, self.v1, self.iters, self.seed)
        self.v1 = v1
        return v1, sigma

    def cosines(self, inputs: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        """The input half: cos(x_i, v₁) of up to `max_rows` rows of `inputs` (..., in).

        Tensor code only, so a compiled forward can run it in its graph and keep just the
        cosines, not the inputs."""
        if inputs.ndim < 1 or inputs.shape[-1] != v1.shape[0]:
            raise ValueError(
                f"inputs shape {tuple(inputs.shape)}: last dim != weight in-features "
                f"{v1.shape[0]}"
            )
        x = sample_rows(inputs.detach(), self.max_rows).float()
        tiny = torch.finfo(torch.float32).tiny
        cos: torch.Tensor = (x @ v1) / (x.norm(dim=1) * v1.norm()).clamp_min(tiny)
        return cos

    def summarise(self, cos: torch.Tensor, sigma: torch.Tensor) -> SAResult:
        """Histogram, mean and sign diversity of the cosines from `cosines`."""
        return _summarise(cos, self.bins, sigma)


def _summarise(cos: torch.Tensor, bins: int, sigma: torch.Tensor) -> SAResult:
    finite = torch.isfinite(cos)
    c = torch.where(finite, cos, 0.0).clamp(-1.0, 1.0)
    idx = ((c + 1.0) * (bins / 2.0)).floor().long().clamp(0, bins - 1)
    hist = torch.zeros(bins, dtype=torch.int64, device=cos.device)
    hist.scatter_add_(0, idx, finite.long())
    n_fin = finite.sum()
    denom = n_fin.clamp_min(1).float()
    nan = torch.full((), float("nan"), device=cos.device)
    mean = torch.where(n_fin > 0, c.sum() / denom, nan)
    p_pos = ((c > 0) & finite).sum().float() / denom
    p_neg = ((c < 0) & finite).sum().float() / denom
    diversity = torch.where(n_fin > 0, 1.0 - (p_pos - p_neg).abs(), nan)
    return SAResult(
        hist=hist,
        nonfinite=cos.numel() - n_fin,
        rows=cos.numel(),
        mean=mean,
        sign_diversity=diversity,
        sigma1=sigma,
    )
