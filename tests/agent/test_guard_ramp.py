"""The guard's ramp: which hyper-parameter changes it spreads out, how far and how long, the
events, and that the optimizer and its schedule keep the user's values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import spikewatch
from spikewatch.agent._guard import Guard
from spikewatch.agent._guard_optimizer import apply_ramps, restore_user_values
from spikewatch.agent._ramp import HparamChange, RampMachine
from spikewatch.protocol.names import EventType
from tests.agent import _delivered as dl
from tests.agent._loop import guarded_seed_run, train_on
from tests.agent._peer import Peer

LR_JUMP = HparamChange(group=0, hparam="lr", old=0.001, new=0.01, threshold_factor=10.0,
                       ratio_after=3.0)
BETA1_DROP = HparamChange(group=0, hparam="beta1", old=0.9, new=0.5, threshold_factor=6.33,
                          ratio_after=2.0)


@pytest.mark.parametrize(("kw", "field"), [
    ({"ramp_steps": 1}, "ramp_steps"), ({"ramp_steps": -1}, "ramp_steps"),
    ({"ramp_factor": 1.0}, "ramp_factor"), ({"ramp_factor": math.nan}, "ramp_factor")])
def test_ramp_bounds_are_clear_errors(kw: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"Guard\\({field}="):
        Guard(**kw)  # type: ignore[arg-type]


def test_off_by_default() -> None:
    assert Guard().ramp_steps == 0
    assert RampMachine(0, 2.0).start(5, [LR_JUMP]) == []


@pytest.mark.parametrize("change", [
    HparamChange(0, "lr", 0.001, 0.0015, 1.5, 3.0),  # a smaller drop than the factor: a schedule
    HparamChange(0, "lr", 0.01, 0.001, 0.1, 0.1),  # lowering lr raises the threshold
    HparamChange(0, "beta1", 0.9, 0.99, 0.1, 0.1),  # raising β1 raises it
    HparamChange(0, "lr", 0.0, 0.01, math.inf, None),  # warm-up from 0, before any reading
    HparamChange(0, "lr", 0.001, 0.01, 10.0, None),  # no reading yet
])
def test_leaves_schedules_safe_changes_and_the_first_steps_alone(change: HparamChange) -> None:
    m = RampMachine(10, 2.0)
    assert m.start(3, [change]) == []
    assert m.due(3) == []


def test_an_lr_jump_is_applied_geometrically_then_released() -> None:
    m = RampMachine(4, 2.0)
    [(kind, data)] = m.start(10, [LR_JUMP])
    assert kind == EventType.GUARD_ACTION.value
    assert data["action"] == "ramp"
    assert (data["hparam"], data["old"], data["new"], data["from_step"]) == ("lr", 0.001, 0.01, 10)
    assert data["ramp_steps"] == 4
    assert "lowers the stability threshold 10.00x" in str(data["why"])
    # the user's value is the new one (0.01); steps 10..12 use 0.01·10^(−3/4, −2/4, −1/4)
    used = [r.value(0.01, s) for s in range(10, 13) for r in m.due(s)]
    assert used == pytest.approx([0.001 * 10 ** 0.25, 0.001 * 10 ** 0.5, 0.001 * 10 ** 0.75])
    assert m.finish(11) == []
    [(kind, done)] = m.finish(12)
    assert kind == EventType.GUARD_RELEASE.value
    assert (done["started_at_step"], done["released_at_step"], done["steps"]) == (10, 13, 4)
    assert m.due(13) == []
    assert m.ramps == []
    assert m.actions == 1


def test_a_beta1_drop_ramps_one_minus_beta1_and_follows_the_users_value() -> None:
    m = RampMachine(2, 2.0)
    m.start(0, [BETA1_DROP])
    [r] = m.due(0)
    # halfway in 1−β1: 1 − 0.5·√(0.1/0.5)
    assert r.value(0.5, 0) == pytest.approx(1.0 - 0.5 * math.sqrt(0.2))
    # a user who moved β1 further meanwhile gets the same factor on their value
    assert r.value(0.4, 0) == pytest.approx(1.0 - 0.6 * math.sqrt(0.2))


def test_applied_for_the_step_and_restored_float_tensor_and_betas() -> None:
    p = nn.Parameter(torch.ones(2))
    lr = torch.tensor(0.01)
    opt = torch.optim.Adam([{"params": [p], "lr": lr, "betas": (0.5, 0.999)}])
    m = RampMachine(2, 2.0)
    m.start(0, [LR_JUMP, BETA1_DROP])
    saved = apply_ramps(opt, m, 0)
    g = opt.param_groups[0]
    assert float(g["lr"]) == pytest.approx(0.01 * math.sqrt(0.1))
    assert g["betas"][0] == pytest.approx(1.0 - 0.5 * math.sqrt(0.2))
    assert g["betas"][1] == 0.999
    restore_user_values(saved)
    assert g["lr"] is lr
    assert g["betas"] == (0.5, 0.999)


def _jump_run(peer: Peer, guard: Guard, jump_at: int, steps: int
              ) -> tuple[list[float], spikewatch.Monitor]:  # fmt: skip
    opt, mon, loss_fn = guarded_seed_run(peer.endpoint, guard, 0.001, "ramped")
    used: list[float] = []
    opt.register_step_pre_hook(lambda o, a, k: used.append(float(o.param_groups[0]["lr"])))

    def jump(t: int) -> None:
        if t == jump_at:
            opt.param_groups[0]["lr"] = 0.1  # by hand, 100x: the threshold drops 100x

    train_on(mon, opt, loss_fn, steps, before=jump)
    mon.close(timeout=5.0)
    return used, mon


def test_a_hand_set_lr_jump_is_ramped_in_a_real_run_and_streamed(peer: Peer) -> None:
    used, mon = _jump_run(peer, Guard(ramp_steps=5), jump_at=30, steps=40)
    assert used[:30] == pytest.approx([0.001] * 30)
    # steps 30..33 ramp 0.001 → 0.1 geometrically (100^(k/5)), 34 on use the user's 0.1
    assert used[30:34] == pytest.approx([0.001 * 100 ** (k / 5) for k in range(1, 5)])
    assert used[34:] == pytest.approx([0.1] * 6)
    assert mon.optimizer.param_groups[0]["lr"] == 0.1  # the group keeps the user's value
    [(at, act)] = [(s, e) for s, e in dl.events(peer, EventType.GUARD_ACTION.value)
                   if e.data["action"] == "ramp"]
    assert at == 30
    assert act.data["hparam"] == "lr"
    assert float(act.data["threshold_factor"] or 0.0) > 2.0
    [(released, rel)] = dl.events(peer, EventType.GUARD_RELEASE.value)
    assert released == 33
    assert rel.data["steps"] == 5
