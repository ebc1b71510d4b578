"""Gradient spectrum spike share (Spectra): energy of the top ~1.5% singular directions of G.

For a 2-D gradient G (m×n), k = max(1, round(0.015·min(m, n))) and the share is
Σ_{i≤k} σ_i² / ‖G‖_F². The top-k σ are found by warm-started subspace (block power) iteration,
so a few iterations per call track a slowly rotating spike subspace. Results stay on the device.

`oversample` extra block columns with a Rayleigh–Ritz step converge faster; the small eigh it needs
checks its result on the host, so by default (None) it is used on the CPU only (4 extra columns)
and accelerators iterate a plain k-column block with no host synchronisation. The share is exact
for the block either way (‖GQ‖_F² is the sum of its Ritz values); only convergence speed differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spikewatch.monitor._power import top_singular_subspace

__all__ = ["SpikeShare", "SpikeShareResult", "spike_k"]

SPIKE_FRACTION = 0.015
_CPU_OVERSAMPLE = 4


def spike_k(m: int, n: int, fraction: float = SPIKE_FRACTION) -> int:
    """Number of spike directions: max(1, round(fraction·min(m, n)))."""
    return max(1, round(fraction * min(m, n)))


@dataclass(frozen=True, slots=True)
class SpikeShareResult:
    """Spike energy share (0-d fp32; NaN if G is non-finite, 0 if G is zero) and its top-k σ."""

    share: torch.Tensor
    sigmas: torch.Tensor  # (k,) fp32, descending
    k: int


class SpikeShare:
    """Per-matrix tracker: keeps each named gradient's warm-start block between calls."""

    def __init__(self, iters: int = 2, oversample: int | None = None,
                 fraction: float = SPIKE_FRACTION, seed: int = 0) -> None:
        if iters < 1 or (oversample is not None and oversample < 0) or not 0.0 < fraction <= 1.0:
            raise ValueError("need iters >= 1, oversample >= 0, 0 < fraction <= 1")
        self.iters = iters
        self.oversample = oversample
        self.fraction = fraction
        self.seed = seed
        self._blocks: dict[str, torch.Tensor] = {}

    def update(self, name: str, grad: torch.Tensor) -> SpikeShareResult:
        """Measure one 2-D gradient; `name` keys its warm start."""
        if grad.ndim != 2:
            raise ValueError(f"{name}: spike share needs a 2-D gradient, got {tuple(grad.shape)}")
        G = grad.detach().float()
        # iterate on the smaller Gram matrix: GᵀG if n <= m, else work on Gᵀ
        A = G if G.shape[1] <= G.shape[0] else G.t()
        k = spike_k(A.shape[0], A.shape[1], self.fraction)
        over = self.oversample
        if over is None:
            over = _CPU_OVERSAMPLE if G.device.type == "cpu" else 0
        sigmas, block = top_singular_subspace(A, k, self._blocks.get(name), self.iters, over,
                                              self.seed)
        self._blocks[name] = block
        total = G.square().sum()
        top = sigmas.square().sum()
        share = torch.where(total > 0, top / total.clamp_min(torch.finfo(torch.float32).tiny),
                            torch.zeros((), device=G.device))
        finite = torch.isfinite(total)
        nan = torch.full((), float("nan"), device=G.device)
        share = torch.where(finite, share.clamp(0.0, 1.0), nan)
        sigmas = torch.where(finite, sigmas, nan)
        return SpikeShareResult(share=share, sigmas=sigmas, k=k)

    def forget(self, name: str) -> None:
        """Drop the warm start of `name` (e.g. after the parameter was re-initialised)."""
        self._blocks.pop(name, None)
