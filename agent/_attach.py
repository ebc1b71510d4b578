"""`attach()`: check the user's arguments and options before training starts, then build the
`Monitor`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

import torch
from torch import nn

from spikewatch.agent._config import resolve
from spikewatch.agent._guard import Guard
from spikewatch.agent._layers import select_layers, uncompiled
from spikewatch.agent._local_server import LOCAL, local_endpoint
from spikewatch.agent._monitor import Monitor
from spikewatch.agent._probe_base import Closure, curvature_backend
from spikewatch.agent._trackers import as_tracker

__all__ = ["Monitor", "attach"]


def attach(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    run: str | None = None,
    endpoint: str | None = None,
    closure: Closure | None = None,
    profile: str | None = None,
    overhead_budget: float | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    layers: Iterable[str | nn.Module] | None = None,
    logits_module: nn.Module | None = None,
    curvature: str | None = None,
    sample_fraction: float | None = None,
    ddp_ranks: str | None = None,
    server_key: str | None = None,
    client_secret_key: str | None = None,
    client_public_key: str | None = None,
    enabled: bool | None = None,
    guard: bool | Guard = False,
    trackers: Iterable[object] | None = None,
) -> Monitor:
    """Attach spikewatch to a model and its optimizer; returns the `Monitor`.

    Every option falls back to its SPIKEWATCH_* environment variable (SPIKEWATCH_ENDPOINT, _RUN,
    _PROFILE, _OVERHEAD_BUDGET, _SPOOL_DIR, _CURVATURE, _DDP_RANKS, _SERVER_KEY,
    _CLIENT_KEY(_FILE), _DISABLED). `endpoint="local"` needs no server of one's own: it starts
    (or reuses) a `spikewatch serve` with SQLite in ./spikewatch-local (SPIKEWATCH_LOCAL_DIR),
    detached so it outlives the job, and prints where the run page is (`agent/_local_server.py`;
    the `[server]` extra must be installed). `closure` re-evaluates the loss on the current
    batch and returns it (without calling backward): it enables the exact (or finite-difference)
    λ_grad and λ_max; with curvature="auto" an exact HVP the model cannot double-differentiate
    falls back to finite differences; without a closure the zero-extra-pass secant estimate is used.
    `overhead_budget` is the agent's share of step time (default 0.01) that cadences are
    stretched to respect; `math.inf` never stretches. `guard=True` (or a `Guard` with its knobs)
    lets the agent act when a spike is predicted: a bounded, temporary lift of Adam's decayed
    second moment by default (`agent/_guard.py`); every action is streamed as an event.
    `trackers` also writes every drained record to the experiment trackers a team watches:
    `spikewatch.trackers.TensorBoard/WandB/MLflow/LogMetrics/Callback`, or a `SummaryWriter`, a
    wandb run, an MLflow run, a Lightning logger or a callable given as is (`agent/_trackers.py`;
    not read from the environment). Bad
    options raise ValueError / TypeError here, before training starts; afterwards the agent
    never raises into training.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"attach(): model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError("attach(): optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    if closure is not None and not callable(closure):
        raise TypeError("attach(): closure must be callable")
    if logits_module is not None and not isinstance(logits_module, nn.Module):
        raise TypeError("attach(): logits_module must be a torch.nn.Module")
    cfg = resolve(run=run, endpoint=endpoint, profile=profile, overhead_budget=overhead_budget,
                  spool_dir=spool_dir, curvature=curvature, sample_fraction=sample_fraction,
                  ddp_ranks=ddp_ranks, enabled=enabled,
                  server_key=server_key, client_secret_key=client_secret_key,
                  client_public_key=client_public_key)
    curvature_backend(cfg.curvature, closure)  # refuse exact/fd without a closure up front
    if layers is not None and cfg.enabled:
        select_layers(uncompiled(model), layers)
    if not isinstance(guard, bool | Guard):
        raise TypeError("attach(): guard must be True/False or a Guard, got "
                        f"{type(guard).__name__}")
    policy = Guard() if guard is True else (guard or None)
    if isinstance(trackers, str | bytes) or (trackers is not None
                                             and not isinstance(trackers, Iterable)):
        raise TypeError("attach(): trackers must be a list of trackers, got "
                        f"{type(trackers).__name__}")
    bridges = [as_tracker(t) for t in trackers or ()]
    if cfg.endpoint == LOCAL and cfg.enabled:  # last: bad arguments start no server
        cfg = dataclasses.replace(cfg, endpoint=local_endpoint(cfg.local_dir, cfg.run))
    return Monitor(model, optimizer, cfg, closure=closure, layers=layers,
                   logits_module=logits_module, guard=policy, trackers=bridges)

