"""The guard: its bounds, its state machine (how far, how long, release), what it does to the
optimizer, the events it streams, and that it changes nothing where it does not act."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import spikewatch
from spikewatch.agent._guard import Action, Guard, GuardMachine
from spikewatch.agent._guard_optimizer import (
    apply_eps,
    apply_lr,
    lift_v,
    raised_eps,
    restore_user_values,
)
from spikewatch.monitor.seed_fnn import make_seed_problem
from spikewatch.monitor.two_secant import TwoSecant, TwoSecantReading
from spikewatch.protocol.names import EventType
from tests.agent import _delivered as dl
from tests.agent._peer import Peer

HOT = (1.02, 0.05)  # a reading past the edge with a decayed preconditioner
COLD = (0.5, 0.05)


@pytest.mark.parametrize(("kw", "field"), [
    ({"factor": 1.0}, "factor"), ({"factor": 0.01}, "factor"), ({"hold_steps": 0}, "hold_steps"),
    ({"release_steps": -1}, "release_steps"), ({"rise": 0.5}, "rise"),
    ({"ratio": math.nan}, "ratio"), ({"sustain": 0}, "sustain"),
    ({"action": "clip"}, "action")])  # fmt: skip
def test_policy_bounds_are_clear_errors(kw: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"Guard\\({field}="):
        Guard(**kw)  # type: ignore[arg-type]


def test_the_default_acts_on_the_page_crossing_after_a_minor_spike() -> None:
    """ratio ≥ 0.99 and ρ < 0.5 for 2 readings (the `predicted_loss_spike` rule's crossing),
    after an instability that moved the loss ≥ 50 % (a minor spike)."""
    g = Guard()
    assert (g.action, g.ratio, g.rho, g.sustain, g.rise) == ("v", 0.99, 0.5, 2, 1.5)
    assert (g.factor, g.rearm) == (0.7, True)  # chosen on the guard benchmark (docs/guard.md)
    m = GuardMachine(g)
    assert feed(m, [(1.0, 0.15)] * 3, rise=1.4) == []  # a wobble, not a minor spike
    assert feed(m, [(1.0, 0.6)] * 3, rise=1.6, start=3) == []  # the gradient is not small
    assert [k for _, k, _ in feed(m, [(1.0, 0.45)] * 2, rise=1.6, start=6)] == ["guard_action"]


def feed(m: GuardMachine, readings: list[tuple[float, float]], rise: float = 1.0,
         start: int = 0) -> list[tuple[int, str, dict[str, object]]]:  # fmt: skip
    out = []
    for i, (r, rho) in enumerate(readings):
        out += [(start + i, k, d) for k, d in m.observe(start + i, r, rho, rise)]
    return out


def test_acts_after_sustained_readings_holds_then_releases_linearly() -> None:
    m = GuardMachine(Guard(action="lr", rho=0.2, rise=1.0, factor=0.5, hold_steps=10,
                           release_steps=4,
                           sustain=2))
    assert feed(m, [HOT]) == []  # one reading is not enough
    assert m.multiplier(1) == 1.0
    [(step, kind, data)] = feed(m, [HOT], start=1)
    assert (step, kind) == (1, EventType.GUARD_ACTION.value)
    assert data["action"] == "lr"
    assert data["factor"] == 0.5
    assert data["from_step"] == 2
    assert data["stability_ratio"] == 1.02
    assert data["rho"] == 0.05
    assert "stability ratio 1.020 >= 0.99 with rho 0.050 < 0.2 for 2 readings" in str(data["why"])
    # held at the factor through step 1 + 10, then back to 1 over 4 steps
    assert [m.multiplier(s) for s in range(2, 12)] == [0.5] * 10
    assert [m.multiplier(s) for s in range(12, 16)] == pytest.approx([0.625, 0.75, 0.875, 1.0])
    events = feed(m, [COLD] * 20, start=2)
    assert [(s, k) for s, k, _ in events] == [(15, EventType.GUARD_RELEASE.value)]
    assert events[0][2]["started_at_step"] == 2
    assert events[0][2]["extended"] == 0
    assert m.multiplier(16) == 1.0
    assert m.act is None
    assert m.actions == 1


def test_a_prediction_while_it_acts_extends_the_hold_without_a_new_action() -> None:
    m = GuardMachine(Guard(action="lr", rise=1.0, factor=0.5, hold_steps=10, release_steps=0,
                           sustain=1))
    feed(m, [HOT])
    feed(m, [COLD] * 5 + [HOT], start=1)  # predicted again at step 6: hold to 16
    assert m.multiplier(16) == 0.5
    assert m.multiplier(17) == 1.0
    assert m.actions == 1
    assert m.act is not None
    assert m.act.extended == 1


def test_needs_a_decayed_preconditioner_finite_readings_and_the_rise() -> None:
    m = GuardMachine(Guard(action="lr", sustain=1, rise=1.3, factor=0.5))
    assert feed(m, [(1.5, 0.3), (math.nan, 0.05), (1.5, math.inf)]) == []
    assert feed(m, [HOT], rise=1.2, start=3) == []
    assert [k for _, k, _ in feed(m, [HOT], rise=1.4, start=4)] == ["guard_action"]
    assert m.multiplier(5) == 0.5


@pytest.mark.parametrize("rearm", [False, True])
def test_rearm_acts_again_without_a_new_rise_only_after_a_first_action(rearm: bool) -> None:
    m = GuardMachine(Guard(action="lr", sustain=1, rise=1.3, hold_steps=5, release_steps=0,
                           rearm=rearm))
    assert feed(m, [HOT], rise=1.1) == []  # before any action the rise still gates
    assert [k for _, k, _ in feed(m, [HOT], rise=1.4, start=1)] == ["guard_action"]
    feed(m, [COLD] * 10, rise=1.05, start=2)  # released; the prevented instability rose 5 %
    again = feed(m, [HOT], rise=1.05, start=12)
    assert [k for _, k, _ in again] == (["guard_action"] if rearm else [])
    if rearm:
        assert "re-armed by its earlier action" in str(again[0][2]["why"])
    assert m.actions == (2 if rearm else 1)


def test_the_v_action_lifts_again_when_the_crossing_comes_back_at_most_once_per_hold() -> None:
    """A lift fades as v decays again (within ~70 steps at β2 = 0.99): a crossing predicted again
    while the action holds lifts v once more, never sooner than `hold_steps` after the last lift,
    and the readings of gradients the lift has not reached yet are not counted."""
    m = GuardMachine(Guard(action="v", rise=1.0, sustain=1, hold_steps=10, release_steps=10))
    [(_, kind, first)] = feed(m, [HOT])
    assert (kind, first["from_step"]) == ("guard_action", 1)
    assert m.lifts_v(1)
    assert feed(m, [HOT] * 3, start=1) == []  # steps 1-3: readings from before the lift
    assert feed(m, [HOT], start=4) == []  # predicted again, 4 steps after the lift: held
    assert m.act is not None
    assert (m.act.extended, m.act.lifts, m.actions) == (1, 1, 1)
    assert not any(m.lifts_v(s) for s in range(2, 11))
    [(step, kind, again)] = feed(m, [COLD] * 5 + [HOT], start=5)  # step 10: lift at 11
    assert (step, kind, again["lift"], again["from_step"]) == (10, "guard_action", 2, 11)
    assert "again, 10 steps after the last lift of v (lift 2" in str(again["why"])
    assert again["started_at_step"] == 1  # the action it belongs to (one span in the report)
    assert m.lifts_v(11)
    assert m.actions == 2
    events = feed(m, [COLD] * 40, start=11)
    [(at, kind, release)] = events
    assert (at, kind, release["lifts"], release["started_at_step"]) == (30, "guard_release", 2, 1)


def test_a_late_reading_counts_by_the_step_it_was_due_not_the_step_it_came() -> None:
    """Readings computed in a batch come a few steps after they were due: one due before the
    lift reached its gradient is not evidence, whenever it arrives; one due after it is."""
    m = GuardMachine(Guard(action="v", rise=1.0, sustain=1, hold_steps=1, release_steps=50))
    [(_, kind, _)] = feed(m, [HOT])
    assert kind == "guard_action"
    assert m.observe(5, *HOT, 1.0, made=2) == []  # due at step 2, from before the lift
    assert m.actions == 1
    [(kind, again)] = m.observe(5, *HOT, 1.0, made=4)
    assert (kind, again["lift"]) == ("guard_action", 2)


@pytest.mark.parametrize("impl", [{}, {"foreach": True}, {"fused": True}])
def test_the_v_action_lifts_adam_second_moment_once_and_leaves_lr_alone(
        impl: dict[str, bool]) -> None:  # fmt: skip
    m = GuardMachine(Guard(action="v", rise=1.0, factor=0.5, sustain=1))
    feed(m, [HOT], start=9)
    assert m.lifts_v(10)
    assert not m.lifts_v(11)
    assert m.multiplier(10) == 1.0
    ps = [nn.Parameter(torch.ones(3)) for _ in range(2)]
    opts = [torch.optim.Adam([p], lr=0.1, **impl) for p in ps]  # type: ignore[arg-type]
    for p, opt in zip(ps, opts, strict=True):
        p.grad = torch.ones(3)
        opt.step()
    v = opts[0].state[ps[0]]["exp_avg_sq"].clone()
    assert lift_v(opts[0], 0.5) == 1
    assert torch.equal(opts[0].state[ps[0]]["exp_avg_sq"], v * 4.0)
    moved = []
    for p, opt in zip(ps, opts, strict=True):
        before = p.detach().clone()
        opt.step()  # the same gradient again
        moved.append(float((p.detach() - before).abs().max()))
    # Adam's next v is β2·v + (1 − β2)·g²: the lift shrinks the step by √ of the v ratio
    b2, v0 = 0.999, float(v[0])
    shrink = math.sqrt((b2 * v0 + (1 - b2)) / (b2 * 4 * v0 + (1 - b2)))
    assert moved[0] == pytest.approx(shrink * moved[1], rel=1e-3)
    assert shrink < 0.7


def test_lr_is_scaled_for_one_step_and_restored_float_and_tensor() -> None:
    p = nn.Parameter(torch.ones(2))
    lr = torch.tensor(0.2)
    opt = torch.optim.Adam([{"params": [p], "lr": 0.1}, {"params": [], "lr": lr}])
    saved = apply_lr(opt, 0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert float(opt.param_groups[1]["lr"]) == pytest.approx(0.1)
    assert float(lr) == pytest.approx(0.2)  # the tensor itself is not modified
    restore_user_values(saved)
    assert opt.param_groups[0]["lr"] == 0.1
    assert opt.param_groups[1]["lr"] is lr


def test_the_eps_action_holds_a_raised_eps_then_releases_it_linearly() -> None:
    m = GuardMachine(Guard(action="eps", rise=1.0, factor=0.5, hold_steps=3, release_steps=4,
                           sustain=1))
    assert m.eps_weight(0) == 0.0
    [(_, kind, data)] = feed(m, [HOT])
    assert (kind, data["action"], data["from_step"]) == ("guard_action", "eps", 1)
    assert [m.eps_weight(s) for s in range(1, 9)] == pytest.approx(
        [1.0] * 3 + [0.75, 0.5, 0.25, 0.0, 0.0])
    assert m.multiplier(1) == 1.0  # the learning rate is left alone
    assert not m.lifts_v(1)


def test_raised_eps_is_the_rms_of_the_bias_corrected_second_moment_scaled_by_the_factor() -> None:
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(1))
    groups: list[dict[str, Any]] = [{"params": [a]}, {"params": [b], "betas": (0.9, 0.99)}]
    opt = torch.optim.Adam(groups)
    assert raised_eps(opt, 0.5) == 0.0  # no state yet
    a.grad = torch.full((3,), 2.0)
    b.grad = torch.full((1,), 6.0)
    opt.step()  # after one step the bias-corrected v is g² in each group, whatever its β2
    rms = math.sqrt((3 * 4.0 + 36.0) / 4)
    assert raised_eps(opt, 0.5) == pytest.approx(rms)  # (1/0.5 − 1)·RMS(√v̂)
    assert raised_eps(opt, 0.8) == pytest.approx(0.25 * rms)


def test_eps_is_raised_for_one_step_never_lowered_and_restored() -> None:
    p = nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([{"params": [p], "eps": 1e-8}, {"params": [], "eps": 1e-2}])
    saved = apply_eps(opt, 1e-3, 0.5)
    assert opt.param_groups[0]["eps"] == pytest.approx(1e-8 + 0.5 * (1e-3 - 1e-8))
    assert opt.param_groups[1]["eps"] == 1e-2  # already above the raised value: left alone
    restore_user_values(saved)
    assert [g["eps"] for g in opt.param_groups] == [1e-8, 1e-2]


def _seed_run(steps: int, guard: Guard | bool, peer: Peer | None, record: str = "lr",
              adam: dict[str, bool] | None = None
              ) -> tuple[list[float], list[float], spikewatch.Monitor | None]:  # fmt: skip
    torch.manual_seed(0)
    model, x, y = make_seed_problem(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, **(adam or {}))  # type: ignore[arg-type]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + 1e-4 * t))
    mon = None
    if peer is not None:
        mon = spikewatch.attach(model, opt, run="guarded", endpoint=peer.endpoint, guard=guard,
                                overhead_budget=math.inf)  # a behaviour test: no stretching
    used: list[float] = []
    opt.register_step_pre_hook(lambda o, a, k: used.append(float(o.param_groups[0][record])))
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        if mon is not None:
            mon.log(loss=loss.detach())
        losses.append(float(loss.detach()))
    if mon is not None:
        mon.close(timeout=5.0)
    return losses, used, mon


def test_a_guard_that_never_acts_changes_nothing(peer: Peer) -> None:
    plain, lr_plain, _ = _seed_run(120, False, None)
    guarded, lr_guarded, mon = _seed_run(120, Guard(), peer)  # far from the edge at 120 steps
    assert mon is not None
    assert mon._guard is not None
    assert mon._guard.machine.actions == 0
    assert guarded == plain
    assert lr_guarded == lr_plain
    assert dl.events(peer, EventType.GUARD_ACTION.value) == []


def _past_the_edge_at_steps_10_and_11(monkeypatch: pytest.MonkeyPatch,
                                      action: Action) -> Guard:
    """The seed run is far from the edge this early: the predictor's readings are made to say it
    nears it (ratio 0.95, so that they are computed at every step) from step 6 and is past it
    (1.5) at steps 10 and 11, so that the guard acts on a real optimizer (from step 12, holding
    5 steps and releasing over 2, with `action`)."""
    real = TwoSecant.flush

    def near_edge(self: TwoSecant) -> list[TwoSecantReading]:
        readings = real(self)
        for r in readings:
            made, host = r.step + 1, r.host()  # a reading is due the step after its gradient's
            if host is not None and made >= 6:
                host[0][1] = 1.5 if 10 <= made < 12 else 0.95
        return readings

    monkeypatch.setattr(TwoSecant, "flush", near_edge)
    return Guard(action=action, rho=10.0, rise=1.0, factor=0.5, sustain=2, hold_steps=5,
                 release_steps=2)


@pytest.mark.parametrize("impl", [{}, {"foreach": True}, {"fused": True}])
def test_an_acting_guard_scales_the_update_streams_its_events_and_keeps_the_schedule(
        peer: Peer, impl: dict[str, bool], monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    policy = _past_the_edge_at_steps_10_and_11(monkeypatch, "lr")
    _plain, lr_plain, _ = _seed_run(40, False, None, adam=impl)
    _, lr_used, mon = _seed_run(40, policy, peer, adam=impl)
    assert mon is not None
    assert mon._guard is not None
    acts = dl.events(peer, EventType.GUARD_ACTION.value)
    assert acts, "the guard never acted"
    step, event = acts[0]
    start = event.data["from_step"]
    assert (step, start) == (11, 12)
    assert event.data["action"] == "lr"
    assert event.data["stability_ratio"] == 1.5
    # the updates 12..16 used half the scheduler's lr, 17 three quarters, then all of it again;
    # the scheduler itself was not touched
    assert lr_used[:12] == lr_plain[:12]
    scale = [u / p for u, p in zip(lr_used, lr_plain, strict=True)]
    assert scale[12:20] == pytest.approx([0.5] * 5 + [0.75, 1.0, 1.0])
    assert scale[20:] == pytest.approx([1.0] * 20)
    [(at, release)] = dl.events(peer, EventType.GUARD_RELEASE.value)
    assert at == 18
    assert release.data["started_at_step"] == 12
    assert release.data["steps"] == 7
    # after the run the group holds the scheduler's lr, not a scaled one
    assert mon.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 / (1.0 + 1e-4 * 40))


@pytest.mark.parametrize("impl", [{}, {"foreach": True}, {"fused": True}])
def test_an_acting_eps_guard_raises_eps_streams_it_and_gives_it_back(
        peer: Peer, impl: dict[str, bool], monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    policy = _past_the_edge_at_steps_10_and_11(monkeypatch, "eps")
    plain, eps_plain, _ = _seed_run(40, False, None, "eps", impl)
    guarded, eps_used, mon = _seed_run(40, policy, peer, "eps", impl)
    assert mon is not None
    [(step, event)] = dl.events(peer, EventType.GUARD_ACTION.value)
    assert (step, event.data["from_step"], event.data["action"]) == (11, 12, "eps")
    raised = event.data["eps"]
    assert isinstance(raised, float)
    assert raised > 1e3 * 1e-8  # well above Adam's default: it damps the decayed coordinates
    assert eps_used[:12] == eps_plain[:12] == [1e-8] * 12
    assert guarded[:13] == plain[:13]  # the first raised update shows in the loss of step 13
    assert eps_used[12:17] == pytest.approx([raised] * 5)  # the hold: steps 12..16
    assert eps_used[17] == pytest.approx(1e-8 + 0.5 * (raised - 1e-8))  # half-way back
    assert eps_used[18:] == [1e-8] * 22
    assert guarded[13] != plain[13]
    [(at, release)] = dl.events(peer, EventType.GUARD_RELEASE.value)
    assert (at, release.data["started_at_step"], release.data["action"]) == (18, 12, "eps")
    assert mon.optimizer.param_groups[0]["eps"] == 1e-8  # never saved raised


def test_a_lift_of_v_is_read_by_the_predictor_at_once(peer: Peer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The predictor follows v by Adam's recurrence between reads of the state: a lift it did not
    read would leave the stability ratio 1/factor too high (and the guard re-triggering) until
    its next read. After the lift its v is the optimizer's own."""
    policy = _past_the_edge_at_steps_10_and_11(monkeypatch, "v")
    _, _, mon = _seed_run(40, policy, peer)
    assert mon is not None
    [(step, event)] = dl.events(peer, EventType.GUARD_ACTION.value)
    assert (step, event.data["from_step"], event.data["action"]) == (11, 12, "v")
    est = mon.ctx.predictor.est
    state_v = est._arrays.gather(est._v_views)
    assert np.allclose(est._v, state_v, rtol=1e-5)  # the CPU estimator works in numpy
