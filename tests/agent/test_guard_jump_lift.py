"""The guard's jump lift: a hyper-parameter jump predicted past the edge lifts Adam's v of the
changed group by the threshold drop², streams an action and its release, and re-arms the guard;
nothing else is touched."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from spikewatch.agent._guard import Guard
from spikewatch.agent._guard_hooks import GuardHooks
from spikewatch.agent._guard_optimizer import restore_user_values
from spikewatch.agent._ramp import MAX_JUMP_LIFT, HparamChange, jump_lifts

HOT = (1.02, 0.05)


def change(group: int = 0, factor: float = 4.0, after: float | None = 2.0,
           hparam: str = "lr") -> HparamChange:  # fmt: skip
    return HparamChange(group, hparam, 0.001, 0.004, factor, after)


def test_only_jumps_predicted_past_the_edge_one_per_group_the_largest_capped() -> None:
    assert jump_lifts([change(after=0.9)], 0.99, 2.0) == []  # predicted to stay below the edge
    assert jump_lifts([change(after=None)], 0.99, 2.0) == []  # no reading yet (warm-up)
    assert jump_lifts([change(factor=1.5, after=1.2)], 0.99, 2.0) == []  # a schedule's step
    [lift] = jump_lifts([change(factor=3.0), change(factor=6.0, hparam="beta1")], 0.99, 2.0)
    assert (lift.group, lift.factor) == (0, 6.0)
    assert lift.event["hparam"] == "beta1"
    assert lift.event["v_factor"] == 36.0
    assert "lowers the stability threshold 6.00x, predicted ratio 2.00 >= 0.99" in lift.event["why"]
    [capped] = jump_lifts([change(group=1, factor=100.0)], 0.99, 2.0)
    assert (capped.group, capped.factor) == (1, MAX_JUMP_LIFT)


def _two_group_adam(**kw: Any) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    ps = [nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))]
    opt = torch.optim.Adam([{"params": [ps[0]]}, {"params": [ps[1]]}], lr=0.01, **kw)
    for p in ps:
        p.grad = torch.full_like(p, 0.5)
    opt.step()
    return opt, ps


class _Predictor:
    def __init__(self) -> None:
        self.changed = 0

    def v_changed(self) -> None:
        self.changed += 1


@pytest.mark.parametrize("impl", [{}, {"foreach": True}, {"fused": True}])
def test_lifts_the_changed_groups_v_streams_it_and_re_arms(impl: dict[str, bool]) -> None:
    opt, ps = _two_group_adam(**impl)
    v0 = [opt.state[p]["exp_avg_sq"].clone() for p in ps]
    hooks, pred = GuardHooks(Guard()), _Predictor()
    hooks.before(7, opt, [change(group=1, factor=4.0)], pred)
    assert torch.equal(opt.state[ps[0]]["exp_avg_sq"], v0[0])  # the other group untouched
    assert torch.allclose(opt.state[ps[1]]["exp_avg_sq"], v0[1] * 16.0)
    assert pred.changed == 1  # the predictor re-reads v
    assert (hooks.actions, hooks.jumps) == (1, 1)
    sent: list[tuple[int, str, dict[str, Any]]] = []
    hooks.after(7, opt, None, 1.0, lambda step, kind, **data: sent.append((step, kind, data)))
    [(s1, k1, act), (s2, k2, rel)] = sent
    assert (s1, k1, act["action"], act["from_step"], act["group"]) == (
        7, "guard_action", "jump_lift", 7, 1)
    assert (act["threshold_factor"], act["stability_ratio_after"], act["v_factor"]) == (
        4.0, 2.0, 16.0)
    assert (s2, k2, rel["started_at_step"], rel["released_at_step"]) == (7, "guard_release", 7, 7)
    # re-armed: the next predicted crossing is acted on without an earlier minor spike
    m = hooks.machine
    assert m.observe(8, *HOT, 1.0) == []
    assert [k for k, _ in m.observe(9, *HOT, 1.0)] == ["guard_action"]


@pytest.mark.parametrize("policy", [Guard(jump_lift=False), Guard(ramp_steps=10)])
def test_off_or_left_to_the_ramp(policy: Guard) -> None:
    opt, ps = _two_group_adam()
    v0 = opt.state[ps[0]]["exp_avg_sq"].clone()
    hooks = GuardHooks(policy)
    hooks.before(7, opt, [change(group=0)], None)
    assert hooks.jumps == 0
    assert not hooks.machine.primed
    restore_user_values(hooks._saved)  # the ramp's lr for this step
    assert torch.equal(opt.state[ps[0]]["exp_avg_sq"], v0)


def test_no_adam_state_no_action() -> None:
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.01, momentum=0.9)
    p.grad = torch.ones(3)
    opt.step()
    hooks = GuardHooks(Guard())
    hooks.before(3, opt, [change(hparam="beta1")], _Predictor())
    assert (hooks.jumps, hooks.machine.primed, hooks._pending) == (0, False, [])
