"""The seed's regression MLP (Linear(1, w)–ReLU–Linear(w, 1) on 200 points of sin(x) + sin(4x),
`monitor.seed_fnn.make_seed_problem`): full batch, on minibatches, and with hyperparameter jumps."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmarks.early_warning.scenarios._base import Schedule, Task, adam, init_seed, seeded
from spikewatch.monitor.seed_fnn import make_seed_problem


def mlp(width: int, lr: float, seed: int, *, eps: float = 1e-8, beta1: float = 0.9,
        schedule: Schedule | None = None, weight_decay: float | None = None,
        ) -> Callable[[], Task]:  # fmt: skip
    """Full batch, Adam(lr, β=(beta1, 0.999), eps), or AdamW with `weight_decay`."""

    def build() -> Task:
        model, x, y = make_seed_problem(seed=seed, width=width)
        opt = (adam(model, lr, betas=(beta1, 0.999), eps=eps) if weight_decay is None else
               torch.optim.AdamW(model.parameters(), lr=lr, betas=(beta1, 0.999), eps=eps,
                                 weight_decay=weight_decay))  # fmt: skip
        return Task(model, opt, lambda: nn.functional.mse_loss(model(x), y), schedule)

    return build


def mlp_deep(width: int, depth: int, lr: float, seed: int) -> Callable[[], Task]:
    """The seed's data (200 points of sin(x) + sin(4x)) fitted by a deeper ReLU MLP: `depth`
    hidden layers of `width`; full batch, Adam(lr, β=(0.9, 0.999))."""

    def build() -> Task:
        _, x, y = make_seed_problem(seed=seed, width=1)
        with init_seed(seed):
            layers: list[nn.Module] = [nn.Linear(1, width), nn.ReLU()]
            for _ in range(depth - 1):
                layers += [nn.Linear(width, width), nn.ReLU()]
            model = nn.Sequential(*layers, nn.Linear(width, 1))
        return Task(model, adam(model, lr), lambda: nn.functional.mse_loss(model(x), y))

    return build


def mlp_sgd(width: int, lr: float, seed: int, *, momentum: float,
            schedule: Schedule | None = None) -> Callable[[], Task]:  # fmt: skip
    """Full batch, SGD with (heavy-ball) momentum."""

    def build() -> Task:
        model, x, y = make_seed_problem(seed=seed, width=width)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        return Task(model, opt, lambda: nn.functional.mse_loss(model(x), y), schedule)

    return build


def mlp_minibatch(width: int, lr: float, seed: int, *, batch: int = 32,
                  beta2: float = 0.999) -> Callable[[], Task]:  # fmt: skip
    """Minibatches of `batch` of the 200 points, reshuffled every epoch (the last partial batch
    dropped) from a generator seeded with `seed`; ground truth: the full-data loss."""

    def build() -> Task:
        model, x, y = make_seed_problem(seed=seed, width=width)
        gen = seeded(10_000 + seed)
        per_epoch = x.shape[0] // batch
        cur: list[Tensor] = [torch.arange(batch)]
        order: list[Tensor] = []

        def select(t: int) -> None:
            if t % per_epoch == 0:
                order[:] = [torch.randperm(x.shape[0], generator=gen)]
            i = t % per_epoch
            cur[0] = order[0][i * batch : (i + 1) * batch]

        def loss() -> Tensor:
            idx = cur[0]
            return nn.functional.mse_loss(model(x[idx]), y[idx])

        def full() -> Tensor:
            return nn.functional.mse_loss(model(x), y)

        return Task(model, adam(model, lr, betas=(0.9, beta2)), loss, batch=select,
                    eval_loss=full)  # fmt: skip

    return build
