"""The predictor's latest ratio on the host, without a host-device synchronisation.

On a CPU model the reading is host memory: it is read at once. On an accelerator each reading's
values are copied into pinned host memory with `non_blocking=True` and a CUDA event recorded
after the copy; the next call reads the last copy whose event has completed (`Event.query()`
never waits), so the host value lags the device by a step or two and no step ever waits for it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["HostMirror"]


class HostMirror:
    """`update(values)` with each new device vector; `latest` is the newest one on the host."""

    def __init__(self) -> None:
        self.latest: list[float] | None = None
        self._pending: list[tuple[Any, Tensor]] = []  # (event, pinned host copy), oldest first

    def update(self, values: Tensor) -> list[float] | None:
        if values.device.type == "cpu":
            self.latest = values.tolist()
            return self.latest
        while self._pending and self._pending[0][0].query():
            _, host = self._pending.pop(0)
            self.latest = host.tolist()
        if len(self._pending) < 4:  # a device far behind is not waited for, nor queued on
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record()
            self._pending.append((event, host))
        return self.latest
