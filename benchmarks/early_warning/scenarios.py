"""Deterministic CPU training scenarios for the early-warning benchmark, built in code.

Each scenario is a full-batch training problem that spikes (or a stable control next to it).
`Scenario.build()` returns a fresh `Task`: the model, its Adam optimizer, a closure that
re-evaluates the loss on the (fixed) batch without calling backward, and an optional schedule
that changes hyperparameters before a given step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from monitor.seed_fnn import make_seed_problem

__all__ = ["QUICK", "SCENARIOS", "Scenario", "Task", "by_name"]

Schedule = Callable[[int, torch.optim.Optimizer], None]


@dataclass
class Task:
    """One built scenario, ready to train."""

    model: nn.Module
    optimizer: torch.optim.Adam
    closure: Callable[[], Tensor]
    schedule: Schedule | None = None


@dataclass(frozen=True)
class Scenario:
    """A named, deterministic training problem. `control` marks a run expected not to spike."""

    name: str
    family: str
    control: bool
    steps: int
    build: Callable[[], Task] = field(repr=False, compare=False)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _adam(model: nn.Module, lr: float, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8) -> torch.optim.Adam:  # fmt: skip
    return torch.optim.Adam(model.parameters(), lr=lr, betas=betas, eps=eps)


# --- the seed's regression MLP (sin(x) + sin(4x)) ----------------------------------------------


def _mlp(width: int, lr: float, seed: int, eps: float = 1e-8,
         schedule: Schedule | None = None) -> Callable[[], Task]:  # fmt: skip
    def build() -> Task:
        model, x, y = make_seed_problem(seed=seed, width=width)
        return Task(model, _adam(model, lr, eps=eps),
                    lambda: nn.functional.mse_loss(model(x), y), schedule)  # fmt: skip

    return build


def _at(step: int, **hp: float) -> Schedule:
    """Set group hyperparameters (lr, beta1) once, before optimizer step `step`."""

    def schedule(t: int, opt: torch.optim.Optimizer) -> None:
        if t != step:
            return
        for g in opt.param_groups:
            if "lr" in hp:
                g["lr"] = hp["lr"]
            if "beta1" in hp:
                g["betas"] = (hp["beta1"], g["betas"][1])

    return schedule


# --- Adam on an ill-conditioned quadratic -------------------------------------------------------


class _Quadratic(nn.Module):
    """½ Σ λ_i θ_i² + floor, eigenvalues log-spaced over `cond` (the floor keeps the 2× ground
    truth about the excursion, not about float noise around zero)."""

    def __init__(self, dim: int, cond: float, seed: int, floor: float = 1e-3) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.randn(dim, generator=_seeded(seed)))
        self.register_buffer("lam", torch.logspace(0.0, math.log10(cond), dim))
        self.floor = floor

    def forward(self) -> Tensor:
        lam: Tensor = self.lam  # type: ignore[assignment]
        return 0.5 * (lam * self.theta**2).sum() + self.floor


def _quadratic(lr: float, eps: float, beta2: float, seed: int) -> Callable[[], Task]:
    def build() -> Task:
        model = _Quadratic(dim=20, cond=100.0, seed=seed)
        return Task(model, _adam(model, lr, betas=(0.9, beta2), eps=eps), model)

    return build


# --- a small CNN on synthetic images -------------------------------------------------------------


def _cnn(lr: float, seed: int) -> Callable[[], Task]:
    def build() -> Task:
        gen = _seeded(seed)
        x = torch.randn(512, 1, 8, 8, generator=gen)
        # a smooth target of the image (a fixed random read-out through sin) plus label noise,
        # so the loss has a floor and the 2x ground truth is about excursions, not float noise
        w = torch.randn(64, generator=gen) / 8.0
        y = torch.sin(2.0 * (x.flatten(1) @ w)).unsqueeze(1) + 0.1 * torch.randn(512, 1,
                                                                                generator=gen)
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            # ~250 parameters for 512 noisy samples: it cannot interpolate them
            model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                                  nn.Flatten(), nn.Linear(4 * 16, 1))  # fmt: skip
        finally:
            torch.random.set_rng_state(state)
        return Task(model, _adam(model, lr), lambda: nn.functional.mse_loss(model(x), y))

    return build


# --- a small transformer on synthetic tokens ------------------------------------------------------


class _TinyTransformer(nn.Module):
    def __init__(self, vocab: int, d: int, seq: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(seq, d))
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))
        self.out = nn.Linear(d, vocab)

    def forward(self, tok: Tensor) -> Tensor:
        h = self.emb(tok) + self.pos
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = h + self.ff(h)
        out: Tensor = self.out(h)
        return out


def _transformer(lr: float, seed: int) -> Callable[[], Task]:
    def build() -> Task:
        gen = _seeded(seed)
        vocab, seq = 8, 8
        tok = torch.randint(0, vocab, (64, seq), generator=gen)
        target = tok.flip(1)  # reverse the sequence, with 10 % of the labels noise (a floor)
        noisy = torch.rand(target.shape, generator=gen) < 0.1
        target = torch.where(noisy, torch.randint(0, vocab, target.shape, generator=gen), target)
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            model = _TinyTransformer(vocab, 16, seq)
        finally:
            torch.random.set_rng_state(state)

        def loss() -> Tensor:
            return nn.functional.cross_entropy(model(tok).reshape(-1, vocab), target.reshape(-1))

        return Task(model, _adam(model, lr), loss)

    return build


def _s(name: str, family: str, control: bool, steps: int, build: Callable[[], Task]) -> Scenario:
    return Scenario(name, family, control, steps, build)


MLP = "regression-mlp"
SCENARIOS: tuple[Scenario, ...] = (
    _s("mlp-w1000-lr0.01-s0", MLP, False, 1200, _mlp(1000, 0.01, 0)),
    _s("mlp-w1000-lr0.01-s1", MLP, False, 1200, _mlp(1000, 0.01, 1)),
    _s("mlp-w500-lr0.01-s2", MLP, False, 1200, _mlp(500, 0.01, 2)),
    _s("mlp-w1000-lr0.005-s0", MLP, False, 1200, _mlp(1000, 0.005, 0)),
    _s("mlp-w1000-lr0.001-s0", MLP, True, 1200, _mlp(1000, 0.001, 0)),
    _s("mlp-w1000-lr0.01-eps0.1-s0", MLP, True, 1200, _mlp(1000, 0.01, 0, eps=0.1)),
    _s("mlp-w500-lr0.001-s2", MLP, True, 1200, _mlp(500, 0.001, 2)),
    _s("quad-b2-0.99", "quadratic", False, 800, _quadratic(0.05, 1e-8, 0.99, 0)),
    # ε bounds the step: stable when η·λ_max·(1−β1)/((1+β1)·ε) < 2, i.e. ε > 0.13 here; ε = 0.1
    # sits just past that edge (bounded oscillation, no spike), ε = 0.5 well inside it
    _s("quad-b2-0.99-eps0.1", "quadratic", True, 800, _quadratic(0.05, 0.1, 0.99, 0)),
    _s("quad-b2-0.99-eps0.5", "quadratic", True, 800, _quadratic(0.05, 0.5, 0.99, 0)),
    # the CNN and the transformer did not spike within these budgets in any setting tried
    # (CNN lr 0.003–0.03; transformer lr 0.001–0.05): they test false pages only.
    _s("cnn-lr0.01", "cnn", False, 300, _cnn(0.01, 0)),
    _s("cnn-lr0.001", "cnn", True, 300, _cnn(0.001, 0)),
    _s("transformer-lr0.03", "transformer", False, 600, _transformer(0.03, 0)),
    _s("transformer-lr0.001", "transformer", True, 600, _transformer(0.001, 0)),
    _s("mlp-beta1-down-0.9-0.5", "hparam-jump", False, 900,
       _mlp(1000, 0.003, 0, schedule=_at(500, beta1=0.5))),
    # raising Adam's β1 raises the threshold 2(1+β1)/((1−β1)η) and exp_avg is an average: no spike
    _s("mlp-beta1-up-0.9-0.99", "hparam-jump", True, 900,
       _mlp(1000, 0.003, 0, schedule=_at(500, beta1=0.99))),
    _s("mlp-lr-jump-0.001-0.01", "hparam-jump", False, 900,
       _mlp(1000, 0.001, 0, schedule=_at(500, lr=0.01))),
    # the drop comes at 400, before the lr-0.01 run's first edge-of-stability crossing (467)
    _s("mlp-lr-drop-0.01-0.001", "hparam-jump", True, 900,
       _mlp(1000, 0.01, 0, schedule=_at(400, lr=0.001))),
)
QUICK: tuple[str, ...] = ("quad-b2-0.99", "quad-b2-0.99-eps0.1")


def by_name(names: tuple[str, ...] | list[str]) -> list[Scenario]:
    """The scenarios with these names, in order; KeyError naming an unknown one."""
    table = {s.name: s for s in SCENARIOS}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise KeyError(f"unknown scenario(s) {unknown}; known: {sorted(table)}")
    return [table[n] for n in names]
