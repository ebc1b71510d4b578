"""A spike of the loss re-arms the guard: once the logged loss has spiked by llm-foundry's rule
(≥ 2× its running mean for more than 4 steps), predicted crossings are acted on without waiting
for an instability that moved the loss 1.5×. A transformer's first spike often comes with no
sustained crossing ahead of it, and the wobbles after it reset the rise, so without this the
guard never acts on the crossings that precede its next spikes (docs/guard.md)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spikewatch.agent._drain import Reactive
from spikewatch.agent._guard import Guard, GuardMachine
from spikewatch.agent._guard_hooks import GuardHooks
from spikewatch.protocol import names as nm
from spikewatch.protocol import wire
from spikewatch.protocol.names import EventType
from tests.agent import _delivered as dl
from tests.agent._loop import guarded_seed_run
from tests.agent._peer import Peer

HOT = (1.02, 0.05)  # a predicted crossing (ratio past the edge, decayed preconditioner)


def _records(losses: list[float]) -> list[wire.Record]:
    return [wire.Record(step=i, time=float(i), scalars={nm.LOSS: x}) for i, x in enumerate(losses)]


@pytest.mark.parametrize(("tail", "spiked"), [
    ([3.0] * 6, True),  # 3x for six steps: a spike (more than 4 steps over 2x the mean)
    ([3.0] * 4 + [1.0] * 2, False),  # four steps over: a blip, not a spike
    ([50.0] + [1.0] * 5, False),  # one bad batch
    ([math.nan] * 6, False),  # non-finite: reported as such, not a spike
    ([1.4] * 6, False),  # a near-edge wobble
])  # fmt: skip
def test_the_drain_notes_the_first_sustained_spike_of_the_loss(tail: list[float],
                                                               spiked: bool) -> None:
    reactive = Reactive()
    reactive.observe(_records([1.0] * 50 + tail + [3.0, 1.0]), beta2=0.999)
    assert reactive.spiked_at == (54 if spiked else None)  # the 5th step over: > 4 steps
    later = [wire.Record(step=60 + i, time=60.0 + i, scalars={nm.LOSS: 9.0}) for i in range(6)]
    reactive.observe(later, beta2=0.999)
    assert reactive.spiked_at == (54 if spiked else 64)  # the first one is kept


def test_a_primed_machine_acts_on_a_crossing_without_the_rise_and_says_why() -> None:
    cold = GuardMachine(Guard())
    assert cold.observe(10, *HOT, 1.0) == cold.observe(11, *HOT, 1.0) == []
    m = GuardMachine(Guard())
    m.prime("the loss spike at step 7")
    m.prime("a jump lift")  # the first reason is kept
    assert m.observe(10, *HOT, 1.0) == []  # sustain 2
    [(kind, act)] = m.observe(11, *HOT, 1.0)
    assert (kind, act["trigger"], act["from_step"]) == ("guard_action", "stability_ratio", 12)
    assert act["why"].endswith(", re-armed by the loss spike at step 7")
    acted = GuardMachine(Guard())  # armed by its own action first: that is what it says
    assert [k for k, _ in acted.observe(1, *HOT, 1.6) + acted.observe(2, *HOT, 1.6)] == [
        "guard_action"]
    acted.prime("the loss spike at step 7")
    later = acted.observe(200, *HOT, 1.0) + acted.observe(201, *HOT, 1.0)
    assert [k for k, _ in later] == ["guard_release", "guard_action"]
    assert later[1][1]["why"].endswith(", re-armed by its earlier action")
    off = GuardMachine(Guard(rearm=False))
    off.prime("the loss spike at step 7")
    assert off.observe(10, *HOT, 1.0) == off.observe(11, *HOT, 1.0) == []


def test_the_hooks_prime_the_machine_from_the_drains_spike_only_with_rearm() -> None:
    model = nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters())
    events: list[tuple[int, str]] = []
    for rearm, spiked_at, primed in ((True, None, False), (True, 40, True), (False, 40, False)):
        hooks = GuardHooks(Guard(rearm=rearm))
        hooks.after(50, opt, None, 1.0, lambda s, k, **_: events.append((s, k)),
                    spiked_at=spiked_at)
        assert (hooks.machine.primed, hooks.machine.armed_by) == (
            primed, "the loss spike at step 40" if primed else "")
    assert events == []  # priming is not an action


def test_a_job_whose_logged_loss_spiked_is_guarded_from_its_first_crossing(peer: Peer) -> None:
    """The seed FNN at lr 0.01 crosses the edge ahead of its first spike; unprimed, the guard
    waits for a minor spike and acts later. Here the logged loss (only what the agent reads;
    training is untouched) spikes 10× for 8 steps early on: the guard then acts on the first
    sustained crossing, earlier, and the run is the same as the unprimed one until then."""
    steps = 1200
    first: dict[bool, tuple[int, str]] = {}
    losses: dict[bool, list[float]] = {}
    seen = 0  # the first run's actions, delivered before the second's
    for mark in (False, True):
        opt, mon, loss_fn = guarded_seed_run(peer.endpoint, Guard(), 0.01, f"spike-{mark}")
        run: list[float] = []
        for i in range(steps):
            opt.zero_grad()
            loss = loss_fn()
            torch.autograd.backward(loss)
            opt.step()
            logged = loss.detach() * (10.0 if mark and 300 <= i < 308 else 1.0)
            mon.log(loss=logged)
            run.append(float(loss.detach()))
        dl.closed_and_delivered(peer, mon)
        delivered = dl.events(peer, EventType.GUARD_ACTION.value)
        actions = [e for _, e in delivered[seen:] if e.data["trigger"] == "stability_ratio"]
        seen = len(delivered)
        assert actions, "the seed FNN at lr 0.01 crosses the edge within the run"
        start, why = actions[0].data["from_step"], actions[0].data["why"]
        assert isinstance(start, int)
        assert isinstance(why, str)
        first[mark], losses[mark] = (start, why), run
    (plain_start, plain_why), (primed_start, primed_why) = first[False], first[True]
    assert "after an instability that moved the loss" in plain_why
    assert "re-armed by the loss spike at step 304" in primed_why
    assert 308 < primed_start < plain_start
    assert losses[True][:primed_start + 1] == losses[False][:primed_start + 1]
    assert losses[True][primed_start + 1] != losses[False][primed_start + 1]
