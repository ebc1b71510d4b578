"""A fixed sample of coordinates of a list of tensors, read into one flat vector per call.

Estimators whose every term is a sum over coordinates (the two-secant curvature, ρ) can be computed
on a sample with memory and work proportional to the sample, not to the model. The sample of a
tensor is a lattice of blocks of `BLOCK` consecutive elements (one 64-byte cache line of float32):
every s-th block of its storage from a random offset, s a prime that divides none of the tensor's
dimensions (so the lattice walks across rows and columns alike, never down one column). Reading a
block costs one cache miss where 16 scattered elements would cost 16: after a backward pass the
parameters are cold, and the sample's memory latency, not its arithmetic, is its cost. A tensor of
one to two blocks gives its first block; one of fewer than `BLOCK` elements (a scalar gain, the
bias of a one-unit output) is left out: such tensors hold a negligible share of any model's
coordinates, and leaving them out keeps every view the same (blocks, BLOCK) shape, so one `cat`
reads the whole sample. Each sampled element carries the weight n/k of its tensor (k of its n
elements sampled), so weighted sums are unbiased estimates of the sums over the sampled tensors.

Reading costs one strided view per tensor (`as_strided`, no copy; reusable while the tensor object
stays the same, as parameters and optimizer state do) and a few `torch.cat`: no host
synchronisation, no per-element Python. Tensors must keep their shape; one laid out unlike the
sampled tensor (rare for a parameter's gradient and state) is read through a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CoordinateSample", "default_fraction", "gather", "work_dtype"]

BYTES_PER_COORD = 20  # what the two-secant estimator keeps per sampled coordinate (5 × fp32)
MEMORY_SHARE = 0.01  # of the model's bytes
MIN_COORDS = 512
BLOCK = 16


def default_fraction(tensors: Sequence[Tensor], *, share: float = MEMORY_SHARE,
                     bytes_per_coord: int = BYTES_PER_COORD, min_coords: int = MIN_COORDS
                     ) -> float:
    """The sampled fraction whose kept state is `share` of the tensors' bytes, but at least
    `min_coords` coordinates (a model under ~1 MB gets the floor, ~10 KiB)."""
    numel = sum(t.numel() for t in tensors)
    if numel == 0:
        raise ValueError("no coordinates to sample")
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    by_memory = share * nbytes / bytes_per_coord
    return min(1.0, max(by_memory, float(min_coords)) / numel)


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def _stride_for(shape: torch.Size, target: int) -> int:
    """The smallest prime ≥ `target` dividing none of `shape`'s dimensions, in elements or in
    blocks (1 for target ≤ 1)."""
    if target <= 1:
        return 1
    dims = [d for d in shape if d > 1] + [d // BLOCK for d in shape if d >= 2 * BLOCK]
    s = max(2, target)
    while not _is_prime(s) or any(d % s == 0 for d in dims):
        s += 1
    return s


@dataclass(frozen=True, slots=True)
class _Lattice:
    """`count` blocks of `BLOCK` elements, every `stride`-th from block `offset` (a full sample:
    `count` elements from 0)."""

    offset: int
    stride: int
    count: int


def _storage_order(t: Tensor) -> tuple[int, ...]:
    """The permutation of `t`'s dimensions that lists its elements in storage order."""
    strides = t.stride()
    return tuple(sorted(range(t.dim()), key=lambda i: -strides[i]))


def _dense(t: Tensor) -> bool:
    """Whether `t`'s elements fill its storage span without gaps or overlaps (any order)."""
    return t.permute(_storage_order(t)).is_contiguous()


class CoordinateSample:
    """The fixed coordinates of `like`'s tensors sampled at `fraction`, deterministic for a seed.

    `index` lists the tensors sampled (those of at least `BLOCK` elements; all of them when
    `fraction` asks for every coordinate, `full`). `views(tensors)` gives, for tensors of the same
    shapes as the sampled ones (the parameters, their gradients, their optimizer state), one
    (blocks, BLOCK) view each (1-D views of every element when `full`); `gather` copies views
    into one vector, tensor by tensor. `weights` holds each sampled coordinate's weight n/k,
    `segments` each sampled tensor's slice of that vector. Coordinates are walked in the storage
    order of `like` (e.g. channels-last parameters), and the same logical coordinates are read
    from every tensor given later, whatever its layout.
    """

    def __init__(self, like: Sequence[Tensor], fraction: float, *, seed: int = 0) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        gen = torch.Generator().manual_seed(seed)
        target = round(1.0 / fraction)
        self.full = target <= 1  # every coordinate, each tensor as one 1-D view
        self.index = [i for i, t in enumerate(like) if self.full or t.numel() >= BLOCK]
        if not self.index:
            raise ValueError(f"no tensor of at least {BLOCK} elements to sample")
        kept = [like[i] for i in self.index]
        self.shapes = [t.shape for t in kept]
        self._orders = [_storage_order(t) for t in kept]
        # the layout a tensor must have to be read in place: `like`'s own, when dense
        self._strides = [t.stride() if _dense(t) else None for t in kept]
        self._lattices: list[_Lattice] = []
        weights: list[Tensor] = []
        self.segments: list[slice] = []
        start = 0
        for shape in self.shapes:
            n = shape.numel()
            if self.full:
                lat, k = _Lattice(0, 1, n), n
            else:
                blocks = n // BLOCK
                stride = _stride_for(shape, target) if blocks >= 2 else 1
                offset = int(torch.randint(0, min(stride, blocks), (1,), generator=gen))
                count = (blocks - offset + stride - 1) // stride
                lat, k = _Lattice(offset, stride, count), count * BLOCK
            self._lattices.append(lat)
            weights.append(torch.full((k,), n / k, dtype=torch.float32))
            self.segments.append(slice(start, start + k))
            start += k
        self.size = start
        self.weights = torch.cat(weights).to(like[0].device)

    def views(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """Views of the sampled coordinates of `tensors`, one per sampled tensor (in `index`
        order: pass `[ts[i] for i in sample.index]`): one call per tensor, no copy; a copy only
        for a tensor laid out unlike the sampled one."""
        if len(tensors) != len(self.index):
            raise ValueError(f"expected the {len(self.index)} sampled tensors, got {len(tensors)}")
        out = []
        for j, t in enumerate(tensors):
            lat = self._lattices[j]
            if t.stride() == self._strides[j]:
                if self.full:
                    out.append(torch.as_strided(t, (lat.count,), (1,), t.storage_offset()))
                else:
                    out.append(torch.as_strided(t, (lat.count, BLOCK), (lat.stride * BLOCK, 1),
                                                t.storage_offset() + lat.offset * BLOCK))
                continue
            if t.shape != self.shapes[j]:
                raise ValueError(f"tensor of shape {tuple(t.shape)} where "
                                 f"{tuple(self.shapes[j])} was sampled")
            flat = t.permute(self._orders[j]).reshape(-1)
            if self.full:
                out.append(flat)
            else:
                rows = flat[:flat.numel() // BLOCK * BLOCK].view(-1, BLOCK)
                out.append(rows[lat.offset::lat.stride])
        return out

    def read(self, tensors: Sequence[Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
        """The sampled coordinates of `tensors` as one vector of `dtype` (see `gather`)."""
        return gather(self.views(tensors), dtype)


def work_dtype(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    """float64 when any input is float64 (its small differences need it), else float32 (which
    holds float16 and bfloat16 values exactly)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def gather(views: Sequence[Tensor], dtype: torch.dtype = torch.float32, rows: int = 1) -> Tensor:
    """Copy views of one `CoordinateSample` into one new tensor of `dtype`: one `cat` when they
    share a dtype. `rows` > 1: the views are `rows` equal runs (e.g. the sample of θ, then of m)
    and the result is (rows, coords)."""
    if all(v.dtype == views[0].dtype for v in views):
        out = torch.cat(list(views)).to(dtype)
    else:
        out = torch.cat([v.to(dtype) for v in views])
    return out.view(rows, -1) if rows > 1 else out.view(-1)
