"""Rank, world size and sharding of the training job, read without any collective.

Under DDP every rank holds the full model and optimizer: either every rank reports (`ddp_ranks=
"all"`, each its own view) or rank 0 alone (`"rank0"`). Under a sharded optimizer or sharded
parameters (ZeroRedundancyOptimizer, FSDP, DTensor parameters) each rank sees only its shard, so it
sends partial sums (`wire.Partial`) that the server combines into exact global values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True, slots=True)
class World:
    rank: int
    world_size: int
    sharded: bool

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def rank_and_size() -> tuple[int, int]:
    """(rank, world size) from torch.distributed if initialised, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that holds this rank's state (unwraps ZeroRedundancyOptimizer and wrappers)."""
    inner = optimizer
    for _ in range(4):
        nxt = getattr(inner, "optim", None)  # ZeroRedundancyOptimizer keeps its shard's optimizer
        if not isinstance(nxt, torch.optim.Optimizer):
            nxt = getattr(inner, "optimizer", None)  # accelerate / Lightning style wrappers
        if not isinstance(nxt, torch.optim.Optimizer) or nxt is inner:
            break
        inner = nxt
    return inner


def _is_sharded(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    try:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        if isinstance(optimizer, ZeroRedundancyOptimizer):
            return True
    except ImportError:  # torch built without distributed
        pass
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            return True
    except ImportError:
        pass
    try:
        from torch.distributed.tensor import DTensor

        if any(isinstance(p, DTensor) for p in model.parameters()):
            return True
    except ImportError:
        pass
    return any(type(m).__name__.startswith("FSDP") for m in model.modules())


def detect(model: nn.Module, optimizer: torch.optim.Optimizer) -> World:
    rank, size = rank_and_size()
    return World(rank, size, size > 1 and _is_sharded(model, optimizer))
