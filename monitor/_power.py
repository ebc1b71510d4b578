"""Warm-started power and subspace (block power) iteration on matrices, without host syncs."""

from __future__ import annotations

import torch


def _cold_start(n: int, k: int, device: torch.device, seed: int) -> torch.Tensor:
    """A deterministic Gaussian start block, generated on `device` (no host transfer)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(n, k, generator=gen, dtype=torch.float32, device=device)


def _warm(prev: torch.Tensor, n: int, k: int, device: torch.device, seed: int) -> torch.Tensor:
    """`prev` if it is all finite, else a cold start (decided on the device, no sync)."""
    return torch.where(torch.isfinite(prev).all(), prev.float(), _cold_start(n, k, device, seed))


def top_right_singular(
    W: torch.Tensor, v0: torch.Tensor | None, iters: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal right singular vector v₁ of W (out×in) by power iteration on WᵀW.

    Warm-started from `v0` when its shape fits; a cold start is deterministic and its sign is
    fixed so that the largest-magnitude entry is positive. Returns (v₁ as fp32 (in,), σ₁ estimate).
    """
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D weight (out×in), got shape {tuple(W.shape)}")
    if iters < 1:
        raise ValueError("iters must be >= 1")
    A = W.detach().float()
    n = A.shape[1]
    cold = v0 is None or v0.shape != (n,) or v0.device != A.device
    if v0 is None or cold:
        v = _cold_start(n, 1, A.device, seed)[:, 0]
    else:
        v = _warm(v0[:, None], n, 1, A.device, seed)[:, 0]
    v = v / v.norm().clamp_min(torch.finfo(torch.float32).tiny)
    for _ in range(iters):
        v = A.t() @ (A @ v)
        v = v / v.norm().clamp_min(torch.finfo(torch.float32).tiny)
    if cold:
        lead = torch.gather(v, 0, v.abs().argmax().reshape(1))  # no host sync (vs v[idx])
        v = v * torch.where(lead < 0, -1.0, 1.0)
    elif v0 is not None:
        # keep the orientation of the previous estimate so streamed means do not flip sign
        v = v * torch.where(v @ torch.nan_to_num(v0.float()) < 0, -1.0, 1.0)
    sigma = (A @ v).norm()
    return v, sigma


def top_singular_subspace(
    G: torch.Tensor, k: int, Q0: torch.Tensor | None, iters: int, oversample: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k singular values of G (m×n) by warm-started subspace iteration on GᵀG.

    Iterates a block of k + `oversample` columns (QR-orthonormalised), then a Rayleigh–Ritz step
    (`oversample` = 0: no Rayleigh–Ritz, no host sync; Σσ² stays exact for the block).
    Returns (top-k singular values in fp32, descending; the block to warm-start the next call).
    """
    if G.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(G.shape)}")
    if iters < 1:
        raise ValueError("iters must be >= 1")
    A = torch.nan_to_num(G.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    n = A.shape[1]
    q = min(k + oversample, min(A.shape))
    if k < 1 or k > min(A.shape):
        raise ValueError(f"k={k} outside [1, {min(A.shape)}]")
    if Q0 is not None and Q0.shape == (n, q) and Q0.device == A.device:
        Q = _warm(Q0, n, q, A.device, seed)
    else:
        Q = _cold_start(n, q, A.device, seed)
    Q, _ = torch.linalg.qr(Q)
    for _ in range(iters):
        Q, _ = torch.linalg.qr(A.t() @ (A @ Q))
    B = A @ Q  # m×q; its singular values are the Ritz values of G on span(Q)
    if q == k:
        # no Rayleigh–Ritz (eigh checks its result on the host: a sync on accelerators). Σσ² of
        # the block is still exact: ‖GQ‖_F² = trace(QᵀGᵀGQ); the σ are the block's column norms.
        return B.square().sum(dim=0).sort(descending=True).values.sqrt(), Q
    gram = B.t() @ B
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    evals = evals.flip(0).clamp_min(0.0)
    Q = Q @ evecs.flip(1)  # rotate the block onto the Ritz vectors (best warm start)
    return evals[:k].sqrt(), Q
