"""The guard's catch-up of v: a reading whose ρ = ‖g‖/‖√v̂‖ is at or above `catch_rho` (the
gradient has outgrown Adam's second moment, the update runs away) raises v to g² at the next
step, streams an action and its release, and re-arms the guard; readings of gradients from
before the catch-up do not count; off at `catch_rho=0`."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import spikewatch
from spikewatch.agent._guard import READING_LAG, Guard, GuardMachine
from spikewatch.agent._guard_hooks import GuardHooks
from spikewatch.agent._guard_optimizer import catch_up_v
from spikewatch.protocol.names import EventType
from tests.agent import _delivered as dl
from tests.agent._peer import Peer

HOT = (1.02, 0.05)  # a predicted crossing (ratio past the edge, decayed preconditioner)


def test_a_runaway_reading_catches_v_up_at_the_next_step_and_re_arms() -> None:
    m = GuardMachine(Guard())
    assert Guard().catch_rho == 12.0
    assert m.observe(10, 0.4, 11.9, 1.0) == []  # large, not runaway
    [(k1, act), (k2, rel)] = m.observe(11, 0.4, 20.0, 1.0)
    assert (k1, act["action"], act["trigger"], act["from_step"], act["read"]) == (
        "guard_action", "v_catch_up", "runaway", 12, "reading")
    assert (act["rho"], act["catch_rho"]) == (20.0, 12.0)
    assert "outgrown Adam's second moment 20-fold" in act["why"]
    assert (k2, rel["started_at_step"], rel["released_at_step"], rel["steps"]) == (
        "guard_release", 12, 12, 1)
    assert [m.catches_v(s) for s in (11, 12, 13)] == [False, True, False]
    assert (m.catches, m.actions, m.primed) == (1, 0, True)
    # readings of gradients from before the catch-up are not evidence, later ones are
    for made in range(12, 12 + READING_LAG):
        assert m.observe(made, 0.4, 30.0, 1.0) == []
    assert [k for k, _ in m.observe(12 + READING_LAG, 0.4, 30.0, 1.0)] == [
        "guard_action", "guard_release"]
    # re-armed: a predicted crossing is acted on without an earlier minor spike
    m2 = GuardMachine(Guard())
    m2.observe(5, 0.4, 15.0, 1.0)
    start = 5 + READING_LAG + 1
    assert m2.observe(start, *HOT, 1.0) == []
    assert [k for k, _ in m2.observe(start + 1, *HOT, 1.0)] == ["guard_action"]


def test_a_runaway_read_before_the_update_catches_v_up_at_that_very_step() -> None:
    m = GuardMachine(Guard())
    assert m.catch_now(20, 11.9) == []  # large, not runaway
    [(k1, act), (k2, rel)] = m.catch_now(20, 23.0)
    assert (k1, act["action"], act["trigger"], act["from_step"], act["read"]) == (
        "guard_action", "v_catch_up", "runaway", 20, "before_update")
    assert "stability_ratio" not in act  # no reading behind it
    assert (act["rho"], act["catch_rho"]) == (23.0, 12.0)
    assert (k2, rel["started_at_step"], rel["released_at_step"], rel["steps"]) == (
        "guard_release", 20, 20, 1)
    assert m.catches_v(20)
    assert not m.catches_v(21)
    assert m.catch_now(20, 30.0) == []  # once per step
    assert (m.catches, m.primed) == (1, True)
    # the reading of the same gradient, two steps later, is not evidence again
    assert m.observe(21, 0.4, 23.0, 1.0, made=21) == []
    for rho in (math.nan, math.inf):
        assert GuardMachine(Guard()).catch_now(5, rho) == []
    assert GuardMachine(Guard(catch_rho=0.0)).catch_now(5, 50.0) == []


@pytest.mark.parametrize("rho", [math.nan, math.inf])
def test_off_at_zero_and_never_on_a_non_finite_or_missing_rho(rho: float) -> None:
    off = GuardMachine(Guard(catch_rho=0.0))
    assert off.observe(3, 0.4, 50.0, 1.0) == []
    assert off.catches == 0
    m = GuardMachine(Guard())
    assert m.observe(3, 0.4, rho, 1.0) == []  # NaN (SGD keeps no v) or a broken reading
    assert m.catches == 0


def test_catch_rho_under_ordinary_values_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"Guard\(catch_rho=1.5\): .*at least 2"):
        Guard(catch_rho=1.5)
    with pytest.raises(ValueError, match=r"Guard\(catch_rho="):
        Guard(catch_rho=-1.0)


def _adam(**kw: Any) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    ps = [nn.Parameter(torch.ones(4)), nn.Parameter(torch.ones(2))]
    opt = torch.optim.Adam(ps, lr=0.01, betas=(0.9, 0.99), **kw)
    for _ in range(3):
        for p in ps:
            p.grad = torch.full_like(p, 0.01)
        opt.step()
    return opt, ps


@pytest.mark.parametrize("impl", [{}, {"foreach": True}, {"fused": True}])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_catch_up_raises_v_to_the_gradient_about_to_be_applied_and_keeps_larger_v(
        impl: dict[str, bool], dtype: torch.dtype) -> None:  # fmt: skip
    opt, ps = _adam(**impl)
    for p in ps:
        p.data = p.data.to(dtype)
        st = opt.state[p]
        st["exp_avg"], st["exp_avg_sq"] = st["exp_avg"].to(dtype), st["exp_avg_sq"].to(dtype)
    v0 = opt.state[ps[0]]["exp_avg_sq"].clone()
    ps[0].grad = torch.tensor([0.0, 0.001, 1.0, 3.0], dtype=dtype)
    ps[1].grad = torch.tensor([math.nan, math.inf], dtype=dtype)
    v1 = opt.state[ps[1]]["exp_avg_sq"].clone()
    assert catch_up_v(opt) == 2
    assert torch.equal(opt.state[ps[1]]["exp_avg_sq"], v1)  # a non-finite gradient: v stays
    opt.state[ps[0]]["exp_avg_sq"].copy_(v0)
    ps[1].grad = None  # not in this step: untouched
    v1 = opt.state[ps[1]]["exp_avg_sq"].clone()
    assert catch_up_v(opt) == 1
    v = opt.state[ps[0]]["exp_avg_sq"]
    t = float(opt.state[ps[0]]["step"]) + 1  # the step the update is about to make
    want = torch.maximum(v0, ps[0].grad.square() * (1.0 - 0.99**t))
    assert v.dtype == dtype
    assert torch.allclose(v.double(), want.double(), rtol=1e-2)
    assert torch.equal(v[:2], v0[:2])  # where v was larger it stays
    assert torch.equal(opt.state[ps[1]]["exp_avg_sq"], v1)
    # after the update no coordinate steps much more than lr
    before = ps[0].detach().double().clone()
    opt.step()
    assert (ps[0].detach().double() - before).abs().max() < 1.5 * 0.01


def test_no_adam_state_nothing_touched() -> None:
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.01, momentum=0.9)
    p.grad = torch.ones(3)
    opt.step()
    assert catch_up_v(opt) == 0


class _Predictor:
    def __init__(self, readings: list[tuple[int, list[float]]], at: int) -> None:
        self.fresh = (at, readings)
        self.changed = 0

    def v_changed(self) -> None:
        self.changed += 1


def test_the_hooks_stream_the_catch_up_and_apply_it_at_the_next_pre_step() -> None:
    opt, ps = _adam()
    hooks = GuardHooks(Guard())
    sent: list[tuple[int, str, dict[str, Any]]] = []
    pred = _Predictor([(7, [0.5, 0.4, 25.0, 0.4])], at=8)  # gradient 7's reading, due at 8
    hooks.after(8, opt, pred, 1.0, lambda step, kind, **data: sent.append((step, kind, data)))
    assert [(s, k, d["action"]) for s, k, d in sent] == [
        (8, "guard_action", "v_catch_up"), (8, "guard_release", "v_catch_up")]
    assert hooks.actions == 1
    for p in ps:
        p.grad = torch.full_like(p, 2.0)
    hooks.before(9, opt, [], pred)
    assert pred.changed == 1  # the predictor re-reads v
    assert float(opt.state[ps[0]]["exp_avg_sq"].min()) >= 4.0 * (1.0 - 0.99**4) * (1 - 1e-6)


def _first_catch_up(peer: Peer, mon: Any) -> tuple[int, dict[str, Any]]:
    """(step, data) of the first catch-up of v the closed job streamed."""
    dl.closed_and_delivered(peer, mon)
    acts = dl.events(peer, EventType.GUARD_ACTION.value)
    caught = [(s, dict(e.data)) for s, e in acts if e.data["action"] == "v_catch_up"]
    assert caught, f"no catch-up; actions: {[e.data for _, e in acts]}"
    return caught[0]


def test_a_job_whose_gradient_outgrows_v_is_caught_and_streams_it(peer: Peer) -> None:
    """A small regression settles (β2 = 0.999: v decays slowly and lags) and its targets then
    jump 1000-fold: the gradient outgrows √v̂ by far more than `catch_rho`. The predictor is in
    its batches there (far below the edge), so the reading of the jump catches v up, two to
    four steps after it, and the predictor's next readings are back under the threshold."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mon = spikewatch.attach(model, opt, run="caught", endpoint=peer.endpoint, guard=True,
                            overhead_budget=math.inf)  # a behaviour test: no stretching
    shock = 400
    for step in range(shock + 20):
        target = y * 1000.0 if step >= shock else y
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        mon.log(loss.detach())
    step, data = _first_catch_up(peer, mon)
    assert shock <= step <= shock + 4
    assert isinstance(data["rho"], float)
    assert data["rho"] >= 12.0
    assert data["trigger"] == "runaway"
    releases = [e.data for _, e in dl.events(peer, EventType.GUARD_RELEASE.value)]
    start = data["from_step"]
    assert {"action": "v_catch_up", "started_at_step": start, "released_at_step": start,
            "steps": 1} in releases
    rho = sorted((s, v) for s, v in dl.by_step(peer, "rho_sampled").items()
                 if s > step + READING_LAG)
    assert rho
    assert max(v for _, v in rho[:5]) < 12.0


def _rho_now(opt: torch.optim.Adam) -> float:
    """ρ of the gradient in .grad with the v̂ the coming step divides by, every coordinate."""
    num = den = 0.0
    for g in opt.param_groups:
        b2 = g["betas"][1]
        for p in g["params"]:
            st, grad = opt.state[p], p.grad
            assert grad is not None
            t = float(st["step"]) + 1.0
            v = b2 * st["exp_avg_sq"] + (1.0 - b2) * grad * grad
            num += float((grad * grad).sum())
            den += float(v.sum()) / (1.0 - b2**t)
    return math.sqrt(num / den)


def test_a_runaway_building_over_steps_is_caught_before_its_update(peer: Peer) -> None:
    """The targets grow 1.3-fold a step for twelve steps: the gradient outgrows √v̂ step by step,
    the predictor reads every step from ρ ≥ 2 on, the gradient it computed arms the watch, and
    v is caught up at the first pre-step whose gradient is past `catch_rho`: the event's ρ is
    the one of the gradient that very step applies (a reading would come two steps later)."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mon = spikewatch.attach(model, opt, run="building", endpoint=peer.endpoint, guard=True,
                            overhead_budget=math.inf)
    shock = 400
    applied: dict[int, float] = {}  # ρ of the gradient each step applies
    for step in range(shock + 20):
        target = y * 1.3 ** min(max(step - shock + 1, 0), 12)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()  # type: ignore[no-untyped-call]
        if step >= shock:
            applied[step] = _rho_now(opt)
        opt.step()
        mon.log(loss.detach())
    step, data = _first_catch_up(peer, mon)
    assert (data["read"], data["from_step"]) == ("before_update", step)
    rho = data["rho"]
    assert isinstance(rho, float)
    assert rho >= 12.0
    # the sample leaves out the one-element output bias: ρ of every other coordinate
    assert rho == pytest.approx(applied[step], rel=0.02)
    assert max(applied[s] for s in range(shock, step)) < 12.0  # the first past catch_rho
