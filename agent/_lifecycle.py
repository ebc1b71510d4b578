"""A monitor's life around the training loop: what it says at hello, where it resumes, which
transport it gets, and its close at interpreter exit."""

from __future__ import annotations

import atexit
import os
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from spikewatch.agent._config import Config
from spikewatch.agent._distributed import World
from spikewatch.protocol import wire


class NullTransport:
    """Stands in for the transport of a disabled or quiet monitor (sends nothing)."""

    def hello(self, meta: Mapping[str, wire.Scalar]) -> bool:
        return True

    def submit(self, records: Sequence[wire.Record], priority: int = 1) -> bool:
        return True

    def counters(self) -> Any:
        return None

    def take_alerts(self) -> list[wire.Alert]:
        return []

    def flush(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float = 2.0) -> None:
        return None


def make_transport(config: Config, world: World) -> Any:
    """The ZeroMQ transport to the configured endpoint, for this rank."""
    from spikewatch.agent._transport import Transport

    return Transport(
        config.endpoint, run=config.run, rank=world.rank, world_size=world.world_size,
        spool_dir=None if config.spool_dir is None else str(config.spool_dir),
        server_public_key=config.server_key, client_secret_key=config.client_secret_key,
        client_public_key=config.client_public_key,
    )


def host_float(v: Any) -> float:
    """A Python float from a number or a one-element tensor (a host read: setup time only)."""
    return float(v.item()) if isinstance(v, Tensor) else float(v)


def resumed_step(opt: torch.optim.Optimizer) -> int:
    """The optimizer state's step count (> 0 when resuming from a checkpoint); read at attach."""
    best = 0
    for state in opt.state.values():
        s = state.get("step") if isinstance(state, dict) else None
        if s is not None:
            best = max(best, round(host_float(s)))
    return best


def run_meta(model: nn.Module, optimizer: torch.optim.Optimizer, local: torch.optim.Optimizer,
             config: Config, world: World, *, curvature: str, closure: bool,
             resumed_at: int) -> dict[str, wire.Scalar]:
    """What the hello message tells the server about the run (model, optimizer, options, the
    first param group's hyper-parameters)."""
    meta: dict[str, wire.Scalar] = {
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "model_class": type(model).__name__,
        "optimizer": type(optimizer).__name__,
        "optimizer_inner": type(local).__name__,
        "param_groups": len(local.param_groups),
        "world_size": world.world_size,
        "rank": world.rank,
        "sharded": world.sharded,
        "resumed_at_step": resumed_at,
        "torch_version": str(torch.__version__),
        "profile": config.profile,
        "curvature": curvature,
        "overhead_budget": config.overhead_budget,
        "ddp_ranks": config.ddp_ranks,
        "pid": os.getpid(),
        "closure": closure,
    }
    g0 = local.param_groups[0] if local.param_groups else {}
    for k, v in g0.items():
        if k == "params" or not wire.KEY_RE.match(k):
            continue
        if k == "betas" and isinstance(v, tuple | list) and len(v) == 2:
            meta["beta1"], meta["beta2"] = host_float(v[0]), host_float(v[1])
        elif isinstance(v, bool | int | float | str) or v is None:
            meta[k] = v
        elif isinstance(v, Tensor) and v.numel() == 1:
            meta[k] = host_float(v)
    return meta


_live: weakref.WeakSet[Any] = weakref.WeakSet()
_exit_registered = False


def close_at_exit(monitor: Any) -> None:
    """Close `monitor` at interpreter exit unless it closed before (`forget`). Monitors close
    before the transport's own exit handler: atexit runs handlers in reverse order, and the
    transport registers when its module is imported."""
    global _exit_registered
    _live.add(monitor)
    if not _exit_registered:
        atexit.register(_close_all)
        _exit_registered = True


def forget(monitor: Any) -> None:
    """`monitor` closed: nothing to do for it at exit."""
    _live.discard(monitor)


def _close_all() -> None:
    for m in list(_live):
        m.close(timeout=2.0)
