"""Output over-confidence (arXiv:2502.02407): cheap proxies of logit-path sharpness.

As the softmax output approaches one-hot, sharpness can fall without the function improving. From
logits of shape (..., classes): mean max-probability, mean entropy (nats), mean 1 − ‖p‖² and mean
logit L2 norm over all leading positions. Computed in fp32 via log-softmax, so fp16/bf16 logits
are safe. Results are 0-d fp32 device tensors (no host synchronisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Overconfidence", "overconfidence"]

_NEG = -1e30  # stand-in for −Inf logits: exp(_NEG − lse) is exactly 0 in fp32


@dataclass(frozen=True, slots=True)
class Overconfidence:
    """Means over counted positions; NaN when no finite position was counted."""

    max_prob: torch.Tensor
    entropy: torch.Tensor  # nats
    impurity: torch.Tensor  # 1 − ‖p‖²
    logit_norm: torch.Tensor
    counted: torch.Tensor  # int64: positions with all-finite logits (and not masked out)
    nonfinite: torch.Tensor  # int64: positions with a NaN/+Inf logit or only −Inf (not masked)


def overconfidence(logits: torch.Tensor, mask: torch.Tensor | None = None) -> Overconfidence:
    """Over-confidence of `logits` (..., C); `mask` (...,) True marks positions to count.

    −Inf logits (masked-out classes) are allowed: they have probability 0 and add no entropy.
    """
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits need a non-empty class dimension, got {tuple(logits.shape)}")
    if mask is not None and mask.shape != logits.shape[:-1]:
        raise ValueError(f"mask shape {tuple(mask.shape)} != logits leading dims "
                         f"{tuple(logits.shape[:-1])}")
    z = logits.detach().reshape(-1, logits.shape[-1])
    keep = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
    if mask is not None:
        keep = mask.detach().reshape(-1).to(device=z.device, dtype=torch.bool)
    zc = z.float().clamp(min=_NEG)  # −Inf → a finite stand-in with probability exactly 0
    top = zc.amax(dim=-1)
    logp = torch.log_softmax(zc, dim=-1)
    p = logp.exp()
    # NaN/+Inf logits make the row non-finite; an all −Inf row has no distribution at all
    bad = ~torch.isfinite(logp[:, 0]) | (top <= _NEG)
    finite_z = torch.nan_to_num(z.float(), nan=0.0, posinf=0.0, neginf=0.0)
    per_row = torch.stack(
        (
            logp.amax(dim=-1).exp(),
            -torch.linalg.vecdot(p, logp),
            1.0 - torch.linalg.vecdot(p, p),
            torch.linalg.vector_norm(finite_z, dim=-1),
        )
    )
    ok = keep & ~bad
    n = ok.sum()
    nan = torch.full((), float("nan"), device=z.device)
    means = torch.where(n > 0, torch.where(ok, per_row, 0.0).sum(dim=1) / n.clamp_min(1), nan)
    return Overconfidence(
        max_prob=means[0],
        entropy=means[1],
        impurity=means[2],
        logit_norm=means[3],
        counted=n,
        nonfinite=(keep & bad).sum(),
    )
