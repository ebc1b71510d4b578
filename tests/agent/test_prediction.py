"""The predictor through the real agent: attach with the defaults and no closure streams the
two-secant stability ratio and ρ every step; when it cannot, it says so."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from spikewatch.agent._config import resolve
from spikewatch.agent._monitor import Monitor
from spikewatch.agent._two_secant_probe import EAGER_RATIO, EAGER_RHO
from spikewatch.monitor.seed_fnn import make_seed_problem
from spikewatch.monitor.two_secant import TwoSecant
from spikewatch.protocol import names as nm
from spikewatch.protocol.names import EventType
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


def _paced_adam(peer: Peer, run: str, seed: int
                ) -> tuple[Monitor, Callable[[int], None], torch.optim.Optimizer,
                           Callable[[], torch.Tensor]]:  # fmt: skip
    """`_paced` on the regression of `seed` under Adam (lr 0.01), with its predictor; the
    monitor, the pacing, the optimizer and the loss."""
    model, x, y = _regression(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor, paced = _paced(peer, run, model, opt)
    assert monitor.ctx.predictor is not None
    return monitor, paced, opt, lambda: nn.functional.mse_loss(model(x), y)


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


@pytest.mark.parametrize("hot", ["ratio", "rho"])
def test_readings_come_in_batches_below_the_edge_every_step_near_it_and_with_each_drain(
        peer: Peer, hot: str) -> None:  # fmt: skip
    """Below EAGER_RATIO the readings are computed every BATCH steps (a few steps late: cheap);
    from it on, at every step, and so from ρ ≥ EAGER_RHO on (a runaway building: the guard's
    catch-up of v must not wait for a batch). A drain computes what is recorded first, so every
    record it sends holds its reading: at the first drain (end of step 24) those of steps 2..23."""
    monitor, paced, opt, loss_fn = _paced_adam(peer, f"unit-batches-{hot}", 3)
    probe = monitor.ctx.predictor
    real = probe.est.flush
    sizes: dict[int, int] = {}
    step = {"now": 0}

    def flush() -> Any:  # readings near the edge from gradient 40 on
        readings = real()
        for r in readings:
            host = r.host()
            assert host is not None
            if hot == "ratio":
                host[0][1] = 0.5 if r.step < 40 else EAGER_RATIO
            else:
                host[0][1], host[0][2] = 0.5, 0.1 if r.step < 40 else EAGER_RHO
        if readings:
            sizes[step["now"]] = len(readings)
        return readings

    probe.est.flush = flush
    delivered: dict[int, list[int]] = {}

    def before(i: int) -> None:
        paced(i)
        step["now"] = i
        if i == 26:
            assert peer.wait_for(lambda: max((r.step for r in dl.records(peer)), default=-1)
                                 >= 23, timeout=5.0)
            delivered[i] = sorted(dl.by_step(peer, nm.STABILITY_RATIO_TWO_SECANT))

    train_on(monitor, opt, loss_fn, 60, before)
    dl.closed_and_delivered(peer, monitor)
    assert delivered[26] == list(range(2, 24))
    # computed at steps 3, 7, 11, ... and at the drain; at every step after the batch that
    # held the first reading ≥ EAGER_RATIO (that of gradient 40, computed at step 44)
    assert [s for s in sizes if s <= 44] == [3, 7, 11, 15, 19, 23, 24, 28, 32, 36, 40, 44]
    assert all(sizes[s] == 4 for s in (7, 11, 40, 44))
    assert [sizes.get(s) for s in range(45, 60)] == [1] * 15
    assert sorted(dl.by_step(peer, nm.STABILITY_RATIO_TWO_SECANT)) == list(range(2, 59))


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


def _hparam_run(peer: Peer, run: str, opt_factory: Callable[[nn.Module], torch.optim.Optimizer],
                change: Callable[[torch.optim.Optimizer], None], at: int = 250
                ) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    """Train the seed problem (width 200: its stability ratio is 0.7–1 from step ~200 at lr
    0.01), change hyper-parameters before step `at`; the hyper-parameter events, and whether
    they reached the peer before the next regular drain (24 steps later; drains every 25)."""
    model, x, y = make_seed_problem(seed=0, width=200)
    opt = opt_factory(model)
    monitor, paced = _paced(peer, run, model, opt)
    early: list[bool] = []

    def before(i: int) -> None:
        paced(i)
        if i == at:
            change(opt)
        if i == at + 2:
            early.append(peer.wait_for(lambda: bool(
                dl.events(peer, EventType.HPARAM_CHANGE.value)
                + dl.events(peer, EventType.MOMENTUM_JUMP.value)), timeout=5.0))

    train_on(monitor, opt, lambda: nn.functional.mse_loss(model(x), y), at + 10, before)
    dl.closed_and_delivered(peer, monitor)
    events = [(s, dict(e.data)) for kind in (EventType.HPARAM_CHANGE, EventType.MOMENTUM_JUMP)
              for s, e in dl.events(peer, kind.value)]
    return events, bool(early and early[0])


def _set_beta1(value: float) -> Callable[[torch.optim.Optimizer], None]:
    def change(opt: torch.optim.Optimizer) -> None:
        for g in opt.param_groups:
            g["betas"] = (value, g["betas"][1])
    return change


def test_a_beta1_drop_past_the_edge_is_predicted_before_the_changed_step_runs(peer: Peer
                                                                              ) -> None:
    """Adam β1 0.9 → 0.5 multiplies the stability ratio by c(0.5)/c(0.9) ≈ 6.3 at once: at the
    pre-step of the changed step the agent knows the last ratio and the factor, flags the change
    as unstable and sends it at once (not at the next drain)."""
    events, early = _hparam_run(
        peer, "unit-beta1-down",
        lambda m: torch.optim.Adam(m.parameters(), lr=0.01, betas=(0.9, 0.999)),
        _set_beta1(0.5))
    assert early  # delivered before the next regular drain
    changes = [(s, d) for s, d in events if d["hparam"] == "beta1"]
    assert changes
    assert {s for s, _ in changes} == {250}
    for _, d in changes:
        assert d["ratio_factor"] == pytest.approx((0.5 / 1.5) / (0.1 / 1.9), rel=0.01)
        before, after = float(d["stability_ratio_before"]), float(d["stability_ratio_after"])
        assert after == pytest.approx(before * float(d["ratio_factor"]), rel=1e-6)
        assert d["unstable_after"] is (after >= 1.0)
    assert any(d["unstable_after"] for _, d in changes), changes


@pytest.mark.parametrize("case", ["adam-beta1-up-rescaled", "sgd-momentum-up"])
def test_raising_momentum_is_not_flagged_unstable(peer: Peer, case: str) -> None:
    """Raising β1 raises Adam's threshold 2(1+β1)/((1−β1)η); SGD's 2(1+μ)/η barely moves: no
    change that takes the run past the edge, whether or not the buffer was rescaled."""
    if case == "adam-beta1-up-rescaled":
        def factory(m: nn.Module) -> torch.optim.Optimizer:
            return torch.optim.Adam(m.parameters(), lr=0.01, betas=(0.90, 0.999))

        def change(opt: torch.optim.Optimizer) -> None:
            _set_beta1(0.97)(opt)
            for st in opt.state.values():
                st["exp_avg"].mul_((1 - 0.90) / (1 - 0.97))  # the seed note's rescale
    else:
        def factory(m: nn.Module) -> torch.optim.Optimizer:
            return torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.90)

        def change(opt: torch.optim.Optimizer) -> None:
            for g in opt.param_groups:
                g["momentum"] = 0.97

    events, _ = _hparam_run(peer, f"unit-{case}", factory, change)
    assert events
    for _, d in events:
        assert float(d["ratio_factor"]) < 1.0
        assert d["unstable_after"] is False


def test_near_the_edge_after_an_instability_the_readings_are_sent_at_once(peer: Peer) -> None:
    """A page needs two readings ≥ 0.99 after an instability that moved the loss; waiting for the
    next drain (every 25 steps) would cost most of its lead, so such readings go out within a
    few steps (`URGENT_EVERY`). Elsewhere the drain cadence holds."""
    monitor, paced, opt, loss_fn = _paced_adam(peer, "unit-near-edge", 5)
    probe = monitor.ctx.predictor
    real = probe.est.flush
    edge = {"on": False}

    def flush() -> Any:  # the estimator reads a ratio of 1.0 once "on"
        readings = real()
        for r in readings:
            host = r.host()
            if edge["on"] and host is not None:
                host[0][1] = 1.0
        return readings

    probe.est.flush = flush
    fresh: dict[int, bool] = {}

    def newest() -> int:
        return max((r.step for r in dl.records(peer)), default=-1)

    def before(i: int) -> None:
        paced(i)
        if 40 <= i < 60 or i >= 66:  # is the last step but four delivered (waiting 0.3 s)?
            fresh[i] = peer.wait_for(lambda: newest() >= i - 5, timeout=0.3)
        if i == 60:
            edge["on"] = True
            monitor._reactive.instability.finished_rise = 1.5  # as after an instability of +50 %

    train_on(monitor, opt, loss_fn, 80, before)
    dl.closed_and_delivered(peer, monitor)
    assert not all(fresh[i] for i in range(40, 60))  # the drain cadence: up to 25 steps old
    assert all(fresh[i] for i in range(66, 80)), fresh  # near the edge: sent within five steps
