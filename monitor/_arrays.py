"""Where the two-secant estimator does its small-vector arithmetic: numpy for a CPU model, torch
on an accelerator.

The estimator's per-step work is about twenty operations on vectors of a few thousand floats:
their cost is the call overhead, not the arithmetic. Right after a training step, in the
optimizer's hook, a torch operation on the CPU costs 8–30 µs (indexing included: caches are cold
and the dispatcher is deep), a numpy one 1–4 µs; on the CPU benchmark model that is the
difference between 0.8 % and 0.2 % of a step. numpy arrays view the same memory as the CPU
tensors (no copy), and views of the parameters and optimizer state made once stay valid while
those tensors live. On an accelerator the arithmetic stays in torch, on the device: no host
synchronisation; host numbers go over through pinned memory without blocking. bfloat16 has no
numpy type: a CPU model in bfloat16 uses torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Arrays"]

_NP = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


class Arrays:
    """The array namespace for one sample: numpy (`host`) or torch on `device`."""

    def __init__(self, device: torch.device, dtype: torch.dtype, sources: Sequence[torch.dtype]
                 ) -> None:
        self.device = device
        self.dtype = dtype
        self.host = device.type == "cpu" and dtype in _NP and all(s in _NP for s in sources)
        self.xp: Any = np if self.host else torch
        self._np_dtype = _NP.get(dtype, np.float32)
        self.tiny = float(torch.finfo(dtype).tiny)  # a denominator's floor

    def views(self, views: list[Tensor]) -> list[Any]:
        """What `gather` reads: numpy views of the same memory (host) or the tensors."""
        return [v.numpy() for v in views] if self.host else views

    def gather(self, views: Sequence[Any], rows: int = 1) -> Any:
        """Copy the views into one new (rows, n) array (n-vector for rows = 1)."""
        out: Any
        if self.host:
            out = np.concatenate(views).astype(self._np_dtype, copy=False)
        elif all(v.dtype == views[0].dtype for v in views):
            out = torch.cat(list(views)).to(self.dtype)
        else:
            out = torch.cat([v.to(self.dtype) for v in views])
        return out.reshape(rows, -1) if rows > 1 else out.reshape(-1)

    def const(self, values: Sequence[float], shape: tuple[int, ...]) -> Any:
        """Host numbers as an array of `shape` (on an accelerator: pinned, not blocking)."""
        if self.host:
            return np.asarray(values, dtype=self._np_dtype).reshape(shape)
        t = torch.tensor(values, dtype=self.dtype).view(shape)
        if self.device.type == "cpu":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def zeros(self, shape: tuple[int, ...]) -> Any:
        if self.host:
            return np.zeros(shape, dtype=self._np_dtype)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def floor(self, a: Any, low: float) -> Any:
        """max(a, low) elementwise (a denominator's floor)."""
        return np.maximum(a, low) if self.host else a.clamp(min=low)

    def from_tensor(self, t: Tensor) -> Any:
        return t.to(self.dtype).numpy() if self.host else t.to(self.dtype)

    def tensor(self, a: Any) -> Tensor:
        """A float32 tensor of `a` (shares memory where it can)."""
        if self.host:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        out: Tensor = a.float()
        return out
