"""ρ per tensor/group/global against a hand-written Adam; decay rate of ‖√v‖; shard combine."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from spikewatch.monitor.adam_state import UnsupportedOptimizer
from spikewatch.monitor.precond_decay import PreconditionerDecay

BETAS = [(0.9, 0.999), (0.8, 0.95)]


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))


def _groups(m: nn.Sequential, wd: float = 0.0) -> list[dict[str, Any]]:
    return [
        {"params": list(m[0].parameters()), "betas": BETAS[0], "weight_decay": wd},
        {"params": list(m[2].parameters()), "betas": BETAS[1], "weight_decay": wd},
    ]


def _loss(m: nn.Module, i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + i)
    x = torch.randn(16, 3, generator=g)
    out: torch.Tensor = m(x).square().mean()
    return out


class _HandAdam:
    """Only the second moment of Adam, written out by hand (float64)."""

    def __init__(self, params: list[list[nn.Parameter]], wd: float = 0.0, coupled: bool = False,
                 amsgrad: bool = False) -> None:
        self.params = params
        self.v = [[torch.zeros_like(p, dtype=torch.float64) for p in g] for g in params]
        self.vmax = [[torch.zeros_like(p, dtype=torch.float64) for p in g] for g in params]
        self.t = 0
        self.wd, self.coupled, self.amsgrad = wd, coupled, amsgrad

    def grads(self) -> list[list[torch.Tensor]]:
        out = []
        for g in self.params:
            row = []
            for p in g:
                assert p.grad is not None
                gr = p.grad.double()
                if self.coupled:
                    gr = gr + self.wd * p.detach().double()
                row.append(gr)
            out.append(row)
        return out

    def fold(self) -> None:
        self.t += 1
        for gi, (b1, b2) in enumerate(BETAS):
            del b1
            for j, gr in enumerate(self.grads()[gi]):
                self.v[gi][j] = b2 * self.v[gi][j] + (1 - b2) * gr.square()
                self.vmax[gi][j] = torch.maximum(self.vmax[gi][j], self.v[gi][j])

    def vhat(self, gi: int, j: int) -> torch.Tensor:
        v = self.vmax[gi][j] if self.amsgrad else self.v[gi][j]
        return v / (1 - BETAS[gi][1] ** self.t)


def _check(res: Any, hand: _HandAdam) -> None:
    grads = hand.grads()
    g2 = [[float(g.square().sum()) for g in row] for row in grads]
    vh = [[float(hand.vhat(gi, j).sum()) for j in range(len(row))] for gi, row in enumerate(grads)]
    flat_g2 = [x for row in g2 for x in row]
    flat_v = [x for row in vh for x in row]
    assert res.tensor_sum_g2.tolist() == pytest.approx(flat_g2, rel=1e-5)
    assert res.tensor_sum_v.tolist() == pytest.approx(flat_v, rel=1e-5)
    rho = [math.sqrt(a / b) for a, b in zip(flat_g2, flat_v, strict=True)]
    assert res.tensor_rho.tolist() == pytest.approx(rho, rel=1e-5)
    grho = [math.sqrt(sum(g2[i]) / sum(vh[i])) for i in range(2)]
    assert res.group_rho.tolist() == pytest.approx(grho, rel=1e-5)
    assert float(res.rho) == pytest.approx(math.sqrt(sum(flat_g2) / sum(flat_v)), rel=1e-5)
    assert float(res.sqrt_v_norm) == pytest.approx(math.sqrt(sum(flat_v)), rel=1e-5)
    assert res.groups == (0, 1)


@pytest.mark.parametrize(
    "kwargs",
    [{"foreach": False}, {"foreach": True}, {"fused": True}, {"amsgrad": True}],
    ids=["forloop", "foreach", "fused", "amsgrad"],
)
@pytest.mark.parametrize("pre_step", [True, False], ids=["pre", "post"])
def test_rho_matches_hand_written_adam(kwargs: dict[str, Any], pre_step: bool) -> None:
    m = _model()
    opt = torch.optim.Adam(_groups(m), lr=1e-2, **kwargs)
    hand = _HandAdam([g["params"] for g in opt.param_groups], amsgrad=bool(kwargs.get("amsgrad")))
    pd = PreconditionerDecay(include_current_grad=pre_step)
    for i in range(4):
        opt.zero_grad()
        _loss(m, i).backward()  # type: ignore[no-untyped-call]
        if pre_step:
            hand.fold()
            res = pd.update(opt)
            opt.step()
        else:
            opt.step()
            hand.fold()
            res = pd.update(opt)
        assert res.step == i + 1
        assert res.names == ("group0.param0", "group0.param1", "group1.param0", "group1.param1")
        _check(res, hand)


@pytest.mark.parametrize("decoupled", [True, False], ids=["adamw", "adam_l2"])
def test_weight_decay_uses_the_gradient_adam_sees(decoupled: bool) -> None:
    m = _model()
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls(_groups(m, wd=0.1), lr=1e-2)
    hand = _HandAdam([g["params"] for g in opt.param_groups], wd=0.1, coupled=not decoupled)
    pd = PreconditionerDecay()
    for i in range(3):
        opt.zero_grad()
        _loss(m, i).backward()  # type: ignore[no-untyped-call]
        hand.fold()
        _check(pd.update(opt), hand)
        opt.step()


def test_decay_rate_is_one_under_pure_beta2_decay() -> None:
    m = _model()
    opt = torch.optim.Adam(_groups(m), lr=1e-2)
    pd = PreconditionerDecay()
    for i in range(5):
        opt.zero_grad()
        _loss(m, i).backward()  # type: ignore[no-untyped-call]
        first = pd.update(opt)
        opt.step()
    assert float(first.decay) > 1.0  # g ≠ 0 feeds v: above pure decay
    for p in m.parameters():
        assert p.grad is not None
        p.grad.zero_()
    for _ in range(3):
        res = pd.update(opt)
        opt.step()
        assert float(res.rho) == 0.0
        assert res.group_decay.tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
        assert float(res.decay) == pytest.approx(1.0, abs=1e-6)


def test_decay_rate_over_a_cadence() -> None:
    m = _model()
    opt = torch.optim.Adam(_groups(m), lr=1e-2)
    pd = PreconditionerDecay()
    opt.zero_grad()
    _loss(m, 0).backward()  # type: ignore[no-untyped-call]
    pd.update(opt)
    opt.step()
    for p in m.parameters():
        assert p.grad is not None
        p.grad.zero_()
    for _ in range(4):  # measured every 5th step
        opt.step()
    res = pd.update(opt)
    assert res.group_decay.tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert math.isnan(PreconditionerDecay().update(opt).decay)  # nothing to compare with yet


def test_partial_sums_combine_shards_exactly() -> None:
    m = _model()
    full = torch.optim.Adam(m.parameters(), lr=1e-2)
    shards = [
        torch.optim.Adam(list(m[0].parameters()), lr=1e-2),
        torch.optim.Adam(list(m[2].parameters()), lr=1e-2),
    ]
    trackers = [PreconditionerDecay() for _ in shards]
    whole = PreconditionerDecay()
    for i in range(3):
        for o in [full, *shards]:
            o.zero_grad()
        _loss(m, i).backward()  # type: ignore[no-untyped-call]
        res = whole.update(full)
        parts = [t.update(o) for t, o in zip(trackers, shards, strict=True)]
        full.step()
        for o in shards:
            o.step()
        num = sum(float(p.sum_g2) for p in parts)
        combined = math.sqrt(num / sum(float(p.sum_v) for p in parts))
        assert combined == pytest.approx(float(res.rho), rel=1e-6)


def test_bf16_parameters_with_fp32_state() -> None:
    m = _model().to(torch.bfloat16)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    pd = PreconditionerDecay()
    for i in range(2):
        opt.zero_grad()
        g = torch.Generator().manual_seed(i)
        m(torch.randn(8, 3, generator=g).bfloat16()).float().square().mean().backward()
        res = pd.update(opt)
        opt.step()
    assert res.rho.dtype == torch.float32
    assert 0.0 < float(res.rho) < 10.0


def test_refusals() -> None:
    m = _model()
    with pytest.raises(UnsupportedOptimizer):
        PreconditionerDecay().update(torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
    opt = torch.optim.Adam(m.parameters())
    with pytest.raises(ValueError, match="no parameter"):
        PreconditionerDecay().update(opt)  # no gradients yet
    m(torch.randn(2, 3)).sum().backward()
    with pytest.raises(ValueError, match="no parameter"):
        PreconditionerDecay(include_current_grad=False).update(opt)  # no state yet


_HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


def _forbid_host_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every Python-level read of a tensor's value fail (each is a host sync on a GPU)."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("host read of a tensor value")

    for name in _HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, refuse)
    with pytest.raises(AssertionError, match="host read"):
        float(torch.ones(()))  # the guard is live


@pytest.mark.parametrize("kwargs", [{}, {"amsgrad": True}], ids=["adam", "amsgrad"])
def test_no_host_reads(monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any]) -> None:
    from spikewatch.monitor.adam_state import adam_view

    m = _model()
    opt = torch.optim.AdamW(_groups(m, wd=0.1), lr=1e-2, **kwargs)
    pd = PreconditionerDecay()
    for i in range(2):
        opt.zero_grad()
        _loss(m, i).backward()  # type: ignore[no-untyped-call]
        views = adam_view(opt)  # step counters are read here, by design
        with monkeypatch.context() as mp:
            _forbid_host_reads(mp)
            res = pd.update(views)
        opt.step()
    assert math.isfinite(float(res.decay))
