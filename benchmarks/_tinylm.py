"""The small transformer language model the cost benchmarks time (0.65 M parameters), and one
training job of it."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from spikewatch.agent._monitor import Monitor

VOCAB, D_MODEL, LAYERS, HEADS, FF, BATCH, SEQ = 1000, 128, 2, 4, 512, 16, 64


class TinyLM(nn.Module):
    """Token embedding + 2-layer nn.TransformerEncoder (d_model 128, 4 heads, ff 512) + LM head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, VOCAB)

    def forward(self, tokens: Tensor) -> Tensor:
        out: Tensor = self.head(self.encoder(self.embed(tokens)))
        return out


LR_SCHEDULES = ("none", "cosine")
WARMUP_STEPS, COSINE_STEPS = 100, 20_000


def _warmup_cosine(step: int) -> float:
    """The lr factor of a linear warm-up then a cosine decay: it changes at every step."""
    warmup = min(1.0, (step + 1) / WARMUP_STEPS)
    return warmup * 0.5 * (1.0 + math.cos(math.pi * step / COSINE_STEPS))


class Job:
    """One model + optimizer + fixed batch; `step()` is one ordinary training step. `compiled`:
    the forward runs through `torch.compile(model)` (`net`), which is what to attach to.
    `lr_schedule="cosine"`: a LambdaLR warm-up + cosine schedule steps after every optimizer
    step, as most real jobs do (the lr changes at every step)."""

    def __init__(self, base: TinyLM, device: torch.device, data: Tensor,
                 compiled: bool = False, lr_schedule: str = "none") -> None:
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        self.model = copy.deepcopy(base).to(device)
        self.net: nn.Module = (cast(nn.Module, torch.compile(self.model)) if compiled
                               else self.model)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-4)
        self.schedule = (torch.optim.lr_scheduler.LambdaLR(self.opt, _warmup_cosine)
                         if lr_schedule == "cosine" else None)
        self.x, self.y = data[:, :-1], data[:, 1:]
        self.monitor: Monitor | None = None

    def loss(self) -> Tensor:
        logits = self.net(self.x)
        return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), self.y.reshape(-1))

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss()
        torch.autograd.backward(loss)
        self.opt.step()
        if self.monitor is not None:
            self.monitor.log(loss=loss)
        if self.schedule is not None:
            self.schedule.step()


def predictor_footprint(monitor: Monitor) -> tuple[int, int] | None:
    """(sampled coordinates, bytes held) of the monitor's two-secant predictor; None without one."""
    probe = monitor.ctx.predictor
    if probe is None:
        return None
    return probe.est.coords, probe.est.memory_bytes


def disable_probes(monitor: Monitor, probes: Iterable[str]) -> None:
    """Switch probes off in a running monitor (diagnosis: which probe costs what)."""
    for probe in probes:
        monitor._disabled.add(probe)
        monitor.scheduler.disable(probe)
