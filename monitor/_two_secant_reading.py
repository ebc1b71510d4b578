"""One reading of the two-secant estimator (`monitor.two_secant`): the values, and the numerators
and denominators they are quotients of, kept on the device or as host floats."""

from __future__ import annotations

import torch
from torch import Tensor

SMOOTHING = 0.5  # EMA weight of the past in the quotients' numerators and denominators


class _Part:
    """A row or an entry of a reading's block, as a read-only attribute."""

    def __init__(self, *index: int) -> None:
        self.index = index

    def __get__(self, reading: TwoSecantReading, owner: object = None) -> Tensor:
        return reading.block[self.index]


class TwoSecantReading:
    """The curvature along gradient ``step`` (the gradient of the step that completed ``step``
    steps before it).

    Three rows of four: the values [λ_two_secant, stability ratio, ρ, the plain secant's
    stability ratio], each a quotient of exponential averages (`SMOOTHING`) of its numerator and
    denominator; those numerators and denominators (value = num/den; ρ² for ρ), which add over
    the coordinate shards of a sharded job. `host()` has them as Python floats where they were
    computed on the host (a CPU model: reading them costs nothing), None on an accelerator;
    `values`, `num`, `den` and the named properties are float32 tensors on the parameters'
    device either way.
    """

    __slots__ = ("_block", "_host", "step")

    def __init__(self, step: int, block: Tensor | None, host: list[list[float]] | None) -> None:
        self.step = step
        self._block = block
        self._host = host

    def host(self) -> list[list[float]] | None:
        """[values, num, den] as floats, or None where they live on an accelerator."""
        return self._host

    @property
    def block(self) -> Tensor:
        if self._block is None:
            assert self._host is not None
            self._block = torch.tensor(self._host, dtype=torch.float32)
        return self._block

    values = _Part(0)  # [λ_two_secant, stability ratio, ρ, the plain secant's ratio]
    num = _Part(1)
    den = _Part(2)
    lambda_two_secant = _Part(0, 0)
    stability_ratio = _Part(0, 1)
    rho = _Part(0, 2)
    stability_ratio_secant = _Part(0, 3)
