"""A logged eval_loss feeds the swing counter: the agent streams eval_loss_swings and
eval_loss_spikes (the clean-loss rules' inputs) when they change and with each drain; a job that
logs no eval_loss gets neither."""

from __future__ import annotations

import torch
from torch import nn

import spikewatch
from spikewatch.protocol import names as nm
from tests.agent import _delivered as dl
from tests.agent._peer import Peer

STEPS = 120
SWING_AT = 70  # eval_loss 1.6× its minimum here, back at the floor the step after
SPIKE_AT = 100  # 3× here (with spike=True)


def _train(peer: Peer, *, log_eval: bool, spike: bool = False) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    monitor = spikewatch.attach(model, opt, run="swings", endpoint=peer.endpoint)
    for i in range(STEPS):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        torch.autograd.backward(loss)
        opt.step()
        if log_eval:
            value = 1.6 if i == SWING_AT else 3.0 if spike and i == SPIKE_AT else 1.0
            monitor.log(loss, eval_loss=torch.tensor(value))
        else:
            monitor.log(loss)
    dl.closed_and_delivered(peer, monitor)


def test_a_completed_swing_of_eval_loss_is_streamed(peer: Peer) -> None:
    _train(peer, log_eval=True)
    swings = dl.by_step(peer, nm.EVAL_LOSS_SWINGS)
    assert swings, "no eval_loss_swings delivered"
    assert all(v == 0.0 for s, v in swings.items() if s <= SWING_AT)
    assert swings[SWING_AT + 1] == 1.0  # sent at the step it changed
    assert max(swings) >= STEPS - 2  # and with the last drain
    assert swings[max(swings)] == 1.0
    spikes = dl.by_step(peer, nm.EVAL_LOSS_SPIKES)
    assert spikes.keys() == swings.keys()
    assert set(spikes.values()) == {0.0}


def test_a_spike_of_eval_loss_is_streamed_and_clears_the_swings(peer: Peer) -> None:
    _train(peer, log_eval=True, spike=True)
    spikes = dl.by_step(peer, nm.EVAL_LOSS_SPIKES)
    assert all(v == 0.0 for s, v in spikes.items() if s < SPIKE_AT)
    assert spikes[SPIKE_AT] == 1.0
    assert spikes[max(spikes)] == 1.0  # still within the last 1000 steps at the end
    swings = dl.by_step(peer, nm.EVAL_LOSS_SWINGS)
    assert swings[SPIKE_AT] == 0.0


def test_no_eval_loss_no_swing_count(peer: Peer) -> None:
    _train(peer, log_eval=False)
    assert dl.by_step(peer, nm.EVAL_LOSS_SWINGS) == {}
    assert dl.by_step(peer, nm.EVAL_LOSS_SPIKES) == {}
    assert dl.by_step(peer, nm.LOSS)
