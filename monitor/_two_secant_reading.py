"""One reading of the two-secant estimator (`monitor.two_secant`): the values, and the numerators
and denominators they are quotients of, kept on the device or as host floats."""

from __future__ import annotations

import torch
from torch import Tensor

SMOOTHING = 0.5  # EMA weight of the past in the quotients' numerators and denominators


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

    @property
    def values(self) -> Tensor:
        return self.block[0]

    @property
    def num(self) -> Tensor:
        return self.block[1]

    @property
    def den(self) -> Tensor:
        return self.block[2]

    @property
    def lambda_two_secant(self) -> Tensor:
        return self.block[0, 0]

    @property
    def stability_ratio(self) -> Tensor:
        return self.block[0, 1]

    @property
    def rho(self) -> Tensor:
        return self.block[0, 2]

    @property
    def stability_ratio_secant(self) -> Tensor:
        return self.block[0, 3]
