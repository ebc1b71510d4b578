"""The predictor through the real agent: attach with the defaults and no closure streams the
two-secant stability ratio and ρ every step; when it cannot, it says so."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from agent import names as nm
from agent._config import resolve
from agent._monitor import Monitor
from agent.names import EventType
from monitor.two_secant import TwoSecant
from tests.agent import _delivered as dl
from tests.agent._loop import train_on
from tests.agent._peer import Peer


def _regression(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))
    return model, torch.randn(64, 4), torch.randn(64, 1)


class _Clock:
    """Time as the scheduler sees it: 50 ms per training step (a small real job; this toy's
    steps take about 1 ms, a hundred times less than the jobs the 1 % budget is made for) and
    `per_call` per agent clock reading."""

    def __init__(self, per_call: float = 0.0) -> None:
        self.t = 0.0
        self.per_call = per_call

    def __call__(self) -> float:
        self.t += self.per_call
        return self.t


def _paced(peer: Peer, run: str, model: nn.Module, opt: torch.optim.Optimizer
           ) -> tuple[Monitor, Callable[[int], None]]:
    """A monitor with the default configuration whose clock sees 50 ms steps."""
    clock = _Clock()

    def step(_: int) -> None:
        clock.t += 0.050

    return Monitor(model, opt, resolve(run=run, endpoint=peer.endpoint, env={}), clock=clock), step


def test_defaults_stream_the_predictor_every_step_with_the_library_values(peer: Peer) -> None:
    model, x, y = _regression()
    twin, _, _ = _regression()  # the same model, trained alongside by hand
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=0.01)
    clock = _Clock()
    monitor = Monitor(model, opt, resolve(run="unit-predict", endpoint=peer.endpoint, env={}),
                      clock=clock)
    est = TwoSecant(twin_opt)
    want: dict[int, float] = {}

    def twin_step(i: int) -> None:
        clock.t += 0.050
        twin_opt.zero_grad()
        torch.autograd.backward(nn.functional.mse_loss(twin(x), y))
        twin_opt.step()
        r = est.update(i + 1)
        if r is not None:
            want[r.step] = float(r.stability_ratio)

    train_on(monitor, opt, lambda: nn.functional.mse_loss(model(x), y), 60, twin_step)
    dl.closed_and_delivered(peer, monitor)
    ratio = dl.by_step(peer, nm.STABILITY_RATIO_TWO_SECANT)
    # from the fourth step on, every step (the last gradient waits for the next step)
    assert sorted(ratio) == list(range(2, 59))
    assert ratio == pytest.approx({s: want[s] for s in ratio}, rel=1e-6)
    assert sorted(dl.by_step(peer, nm.RHO_SAMPLED)) == list(range(2, 59))
    assert sorted(dl.by_step(peer, nm.LAMBDA_TWO_SECANT)) == list(range(2, 59))
    cadence = dl.by_step(peer, nm.AGENT_PREDICTION_CADENCE)
    assert cadence
    assert set(cadence.values()) == {1.0}
    assert dl.events(peer, EventType.PREDICTION_DEGRADED.value) == []


def test_sgd_with_momentum_is_predicted_without_a_second_moment(peer: Peer) -> None:
    model, x, y = _regression(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor, paced = _paced(peer, "unit-predict-sgd", model, opt)
    train_on(monitor, opt, lambda: nn.functional.mse_loss(model(x), y), 20, paced)
    dl.closed_and_delivered(peer, monitor)
    ratio = dl.by_step(peer, nm.STABILITY_RATIO_TWO_SECANT)
    assert sorted(ratio) == list(range(2, 19))
    assert all(math.isfinite(v) for v in ratio.values())
    assert dl.by_step(peer, nm.RHO_SAMPLED) == {}  # SGD keeps no second moment


def test_an_optimizer_it_cannot_read_is_reported_as_no_prediction(peer: Peer) -> None:
    model, x, y = _regression(2)
    opt = torch.optim.RMSprop(model.parameters(), lr=0.01)
    monitor, paced = _paced(peer, "unit-predict-none", model, opt)
    train_on(monitor, opt, lambda: nn.functional.mse_loss(model(x), y), 30, paced)
    dl.closed_and_delivered(peer, monitor)
    assert dl.by_step(peer, nm.STABILITY_RATIO_TWO_SECANT) == {}
    assert set(dl.by_step(peer, nm.AGENT_PREDICTION_CADENCE).values()) == {0.0}
    ((_, event),) = dl.events(peer, EventType.PREDICTION_DEGRADED.value)
    assert event.data["cadence"] == 0
    assert "not Adam/AdamW or SGD" in str(event.data["reason"])


def test_a_budget_too_small_for_the_predictor_stretches_it_and_says_so(peer: Peer) -> None:
    """With an injected clock every agent call costs 1 ms against 40 ms steps and a 1 % budget:
    the predictor cannot run every step. It is stretched, readings keep coming in bursts of
    consecutive steps, and an event plus the streamed cadence say so."""
    model, x, y = _regression(3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    clock = _Clock(per_call=0.001)
    cfg = resolve(run="unit-predict-stretch", endpoint=peer.endpoint, env={})
    monitor = Monitor(model, opt, cfg, clock=clock)

    def slow_step(_: int) -> None:
        clock.t += 0.040

    train_on(monitor, opt, lambda: nn.functional.mse_loss(model(x), y), 400, slow_step)
    dl.closed_and_delivered(peer, monitor)
    cadence = dl.by_step(peer, nm.AGENT_PREDICTION_CADENCE)
    assert max(cadence.values()) > 1
    events = dl.events(peer, EventType.PREDICTION_DEGRADED.value)
    assert events
    assert float(events[0][1].data["cadence"] or 0) > 1
    assert "overhead budget" in str(events[0][1].data["reason"])
    # stretched readings still come: from a due step, the three consecutive steps after it
    ratio = sorted(dl.by_step(peer, nm.STABILITY_RATIO_TWO_SECANT))
    assert ratio
    late = [s for s in ratio if s > 100]
    assert late
    assert len(late) < 300 - 100
