"""Attach defaults on architectures the early-warning suite does not hold: recurrent layers
(GRU, fused-AdamW LSTM), an embedding tied to the output layer, batch norm with a residual
block, a frozen weight beside param groups with their own lr and betas. Every probe must work
(no probe error) and the predictor must stream finite readings."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import spikewatch
from spikewatch.protocol.names import EventType
from tests.agent import _delivered as dl
from tests.agent._peer import Peer

VOCAB = 40


class _Recurrent(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(VOCAB, 16), rnn, nn.Linear(32, VOCAB)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(self.emb(x))[0])  # type: ignore[no-any-return]


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.mid = nn.Embedding(VOCAB, 16), nn.Linear(16, 16)
        self.head = nn.Linear(16, VOCAB, bias=False)
        self.head.weight = self.emb.weight  # one parameter, two uses

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.mid(self.emb(x))))  # type: ignore[no-any-return]


class _ResidualBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.b1(self.c1(x)))
        h = h + torch.relu(self.b2(self.c2(h)))
        return self.fc(h.mean((2, 3)))  # type: ignore[no-any-return]


def _tokens() -> tuple[Tensor, Tensor]:
    x = torch.randint(0, VOCAB, (8, 10))
    return x, x.flip(1)


def _frozen() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 5))
    model[0].weight.requires_grad_(False)
    opt = torch.optim.Adam([{"params": [model[0].bias], "lr": 1e-3},
                            {"params": model[2].parameters(), "lr": 3e-3, "betas": (0.8, 0.99)}])
    return model, opt


Build = Callable[[], tuple[nn.Module, torch.optim.Optimizer]]
CASES: dict[str, tuple[Build, Callable[[], tuple[Tensor, Tensor]]]] = {
    "gru": (lambda: _adam(_Recurrent(nn.GRU(16, 32, num_layers=2, batch_first=True))), _tokens),
    "lstm-fused-adamw": (lambda: _adamw_fused(_Recurrent(nn.LSTM(16, 32, batch_first=True))),
                         _tokens),
    "tied-embedding": (lambda: _adam(_Tied()), _tokens),
    "batchnorm-residual": (lambda: _adam(_ResidualBN()),
                           lambda: (torch.randn(16, 3, 6, 6), torch.randint(0, 5, (16,)))),
    "frozen-weight-two-groups": (_frozen,
                                 lambda: (torch.randn(32, 12), torch.randint(0, 5, (32,)))),
}


def _adam(model: nn.Module) -> tuple[nn.Module, torch.optim.Optimizer]:
    return model, torch.optim.Adam(model.parameters(), lr=3e-3)


def _adamw_fused(model: nn.Module) -> tuple[nn.Module, torch.optim.Optimizer]:
    return model, torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)


@pytest.mark.parametrize("case", list(CASES))
def test_every_probe_works_and_the_predictor_reads(peer: Peer, case: str) -> None:
    torch.manual_seed(0)
    build, data = CASES[case]
    model, opt = build()
    x, y = data()
    mon = spikewatch.attach(model, opt, run=case, endpoint=peer.endpoint,
                            overhead_budget=math.inf)  # a behaviour test: every probe runs
    for _ in range(60):
        opt.zero_grad()
        out = model(x)
        loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        mon.log(loss.detach())
    dl.closed_and_delivered(peer, mon)
    assert [e.data for _, e in dl.events(peer, EventType.PROBE_ERROR.value)] == []
    ratio = dl.by_step(peer, "stability_ratio_two_secant")
    assert len(ratio) >= 50  # every step from the fourth on
    assert all(math.isfinite(v) for v in ratio.values())
    assert all(math.isfinite(v) for v in dl.by_step(peer, "rho_sampled").values())
