"""Exact combination of per-rank partial sums into one global value
(`spikewatch.protocol.names.Combine`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from spikewatch.protocol.names import Combine


def _sum(xs: Sequence[float]) -> float:
    """Correctly rounded sum; non-finite inputs propagate (inf + -inf = nan)."""
    if all(math.isfinite(x) for x in xs):
        return math.fsum(xs)
    return sum(xs, 0.0)


def _ratio(num: float, den: float) -> float:
    if den != 0.0:
        return num / den
    if math.isnan(num) or num == 0.0:
        return math.nan
    return math.copysign(math.inf, num)


def combine(op: Combine, nums: Sequence[float], dens: Sequence[float]) -> float:
    """Global value of a metric from every rank's (num, den)."""
    if op is Combine.SUM:
        return _sum(nums)
    if op is Combine.MAX or op is Combine.MIN:
        if any(math.isnan(x) for x in nums):
            return math.nan
        return max(nums) if op is Combine.MAX else min(nums)
    r = _ratio(_sum(nums), _sum(dens))
    if op is Combine.RATIO:
        return r
    return math.sqrt(r) if r >= 0 else math.nan
