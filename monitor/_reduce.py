"""Fused per-tensor norms with float32 results, for tensors of any floating dtype.

`torch._foreach_norm(ts, ord, dtype=torch.float32)` accumulates and returns in float32 without a
copy of its inputs, but refuses any input that float32 would narrow ("the dtype of the input
(Double) should be convertible without narrowing to the specified dtype (Float)"). Without
`dtype=` the result keeps the input's dtype, which overflows past 65504 for float16 and rounds to
3 significant digits for bfloat16. So: float32 and narrower inputs reduce with `dtype=float32`,
wider ones (float64) in their own dtype, and those few norms are cast afterwards.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fits_f32", "norms_f32"]

_COMMON: frozenset[torch.dtype] = frozenset({torch.float32, torch.float16, torch.bfloat16})


def fits_f32(dtype: torch.dtype) -> bool:
    """float32 holds `dtype` without narrowing: a norm may take it with `dtype=torch.float32`."""
    return dtype in _COMMON or torch.promote_types(dtype, torch.float32) == torch.float32


def norms_f32(tensors: list[Tensor], ord: float = 2.0) -> tuple[Tensor, ...]:
    """0-d float32 `ord`-norms of the tensors, in order (as `torch._foreach_norm` returns them).

    Tensors in float32, float16 or bfloat16 (the usual case): exactly the one fused kernel a
    float32 caller would launch, no copy. Otherwise one more kernel for the inputs wider than
    float32, whose norms are formed in their own dtype and then cast (one more small kernel).
    """
    if {t.dtype for t in tensors} <= _COMMON:
        return torch._foreach_norm(tensors, ord, dtype=torch.float32)
    out: list[Tensor] = list(tensors)  # placeholders: every slot is overwritten below
    narrow = [i for i, t in enumerate(tensors) if fits_f32(t.dtype)]
    wide = [i for i, t in enumerate(tensors) if not fits_f32(t.dtype)]
    if narrow:
        norms = torch._foreach_norm([tensors[i] for i in narrow], ord, dtype=torch.float32)
        for i, n in zip(narrow, norms, strict=True):
            out[i] = n
    cast = torch.stack(torch._foreach_norm([tensors[i] for i in wide], ord)).float()
    for i, n in zip(wide, cast.unbind(0), strict=True):
        out[i] = n
    return tuple(out)
