"""What the framework integrations share: checking the options up front, the run name every rank
agrees on, the output module for the over-confidence probe, the real optimizer under a
framework's wrapper, the loss of one optimizer step, and failing soft once training runs."""

from __future__ import annotations

import inspect
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from spikewatch.agent._attach import Monitor, attach
from spikewatch.agent._config import resolve
from spikewatch.agent._probe_base import curvature_backend
from spikewatch.protocol import wire

log = logging.getLogger("spikewatch.agent")

_CONFIG_OPTIONS = frozenset(inspect.signature(resolve).parameters) - {"env"}
_NOT_RUN = re.compile(r"[^A-Za-z0-9_.:\-]+")


def check_options(options: dict[str, Any]) -> None:
    """Refuse unknown or invalid `attach` options when the callback is built, before training."""
    inspect.signature(attach).bind(None, None, **options)  # TypeError names an unknown option
    cfg = resolve(**{k: v for k, v in options.items() if k in _CONFIG_OPTIONS})
    curvature_backend(cfg.curvature, options.get("closure"))
    logits = options.get("logits_module")
    if logits is not None and not isinstance(logits, nn.Module):
        raise TypeError("logits_module must be a torch.nn.Module")


def run_name(*parts: object) -> str | None:
    """A valid run name made of `parts` (None ones skipped; other characters become '-')."""
    text = "-".join(str(p) for p in parts if p is not None and str(p) != "")
    text = _NOT_RUN.sub("-", text).lstrip("-.:")[:128]
    return text if wire.RUN_RE.match(text) else None


def launch_name(model: nn.Module) -> str:
    """This process's proposal for a run name: the model class and the UTC start time."""
    return run_name(type(model).__name__, time.strftime("%Y%m%d-%H%M%S", time.gmtime())) or "run"


def agreed_run_name(logger: Any, model: nn.Module, broadcast: Callable[[str], Any]) -> str:
    """The logger's ``<name>-<version>`` (an int version reads ``version_<n>``), else this
    process's `launch_name`; then rank 0's, through the framework's `broadcast` (a collective:
    every rank calls it at the same point)."""
    name = None
    if logger is not None:
        version = logger.version
        name = run_name(logger.name, f"version_{version}" if isinstance(version, int) else version)
    return str(broadcast(name or launch_name(model)))


def attach_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, user: dict[str, Any],
                     run: str, index: int) -> tuple[Monitor, str | None]:
    """Attach the `index`-th optimizer (`options_for`), with the output module among its own
    parameters; returns the monitor and that module's name."""
    params = {p for g in optimizer.param_groups for p in g["params"]}
    found = output_module(model, params)
    monitor = attach(model, optimizer, **options_for(user, run, index, found and found[1]))
    return monitor, found[0] if found else None


def broadcast_name(name: str) -> str:
    """Rank 0's `name` on every rank of an initialised torch.distributed group (a collective:
    every rank calls it at the same point), else `name`."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return name
    box: list[Any] = [name]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def options_for(user: dict[str, Any], run: str | None, index: int, logits: nn.Module | None
                ) -> dict[str, Any]:
    """The `attach` options of the `index`-th optimizer: the user's win; else `run` (unless
    SPIKEWATCH_RUN is set), suffixed ".opt<i>" after the first optimizer, and the output module."""
    out = dict(user)
    base = out.get("run") or os.environ.get("SPIKEWATCH_RUN", "").strip() or run
    if base:
        out["run"] = base if index == 0 else f"{str(base)[:120]}.opt{index}"
    if "logits_module" not in out and logits is not None:
        out["logits_module"] = logits
    return out


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The `torch.optim.Optimizer` under a framework's wrapper (Accelerate, Lightning, Fabric)."""
    opt = optimizer
    for _ in range(4):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is opt:
            break
        opt = inner
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"spikewatch: no torch optimizer found in {type(optimizer).__name__}")
    return opt


def output_module(model: nn.Module, params: set[Tensor] | None = None
                  ) -> tuple[str, nn.Module] | None:
    """The module that outputs the logits: ``lm_head`` if the model has one, else the last
    `nn.Linear` with more than one output (one output is a regression or binary head, with no
    class distribution to be over-confident about). With `params`, only a module whose weight is
    among them (the optimizer's own part of the model)."""
    def owned(m: nn.Module) -> bool:
        w = getattr(m, "weight", None)
        return params is None or (isinstance(w, Tensor) and w in params)

    found: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "lm_head" and owned(module):
            return name, module
        if isinstance(module, nn.Linear) and module.out_features > 1 and owned(module):
            found = name, module
    return found


class StepLoss:
    """The training losses (device tensors, never read on the host) since the last optimizer
    step, reduced to the step's one loss when it is taken."""

    def __init__(self) -> None:
        self._parts: list[Tensor] = []

    def add(self, loss: Any, scale: float = 1.0) -> None:
        """Keep a 0-d (or one-element) loss tensor, times `scale`; anything else is ignored."""
        if isinstance(loss, Tensor) and loss.numel() == 1:
            part = loss.detach().reshape(())
            self._parts.append(part * scale if scale != 1.0 else part)

    def take(self, reduce: Callable[[Tensor], Tensor]) -> Tensor | None:
        """The parts reduced on the device (`torch.sum`, `torch.mean`), or None; then forgets."""
        parts, self._parts = self._parts, []
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else reduce(torch.stack(parts))


class FailSoft:
    """Catches what goes wrong inside an integration's hook: warns once per hook, never raises
    into training."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._warned: set[str] = set()

    @contextmanager
    def guard(self, hook: str) -> Iterator[None]:
        try:
            yield
        except Exception as e:
            if hook not in self._warned:
                self._warned.add(hook)
                log.warning("spikewatch %s: %s failed (training goes on): %s: %s",
                            self.owner, hook, type(e).__name__, e)
