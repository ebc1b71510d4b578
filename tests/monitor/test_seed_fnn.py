"""The seed experiment of arXiv:2506.04805: λ_grad stays above 2/η before every loss spike."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from spikewatch.monitor.adam_state import adam_view, bias_corrected_v, effective_grad
from spikewatch.monitor.curvature import TopCurvature, TopEigen, gradient_curvature
from spikewatch.monitor.hvp import ExactHVP
from spikewatch.monitor.secant import SecantEstimator
from spikewatch.monitor.seed_fnn import make_seed_problem
from spikewatch.server.backtest import spike_onsets

STEPS = 1500  # three or more spike episodes with seed 0 on any CPU (onsets differ by CPU)
TOP_EVERY = 10


def test_seed_problem_is_deterministic_and_shaped() -> None:
    rng = torch.random.get_rng_state()
    m1, x, y = make_seed_problem(seed=0)
    m2, _, _ = make_seed_problem(seed=0)
    m3, _, _ = make_seed_problem(seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng)  # global RNG untouched
    assert x.shape == (200, 1)
    assert y.shape == (200, 1)
    assert x.dtype == torch.float32
    assert float(x.min()) == pytest.approx(-math.pi)
    assert float(x.max()) == pytest.approx(math.pi)
    torch.testing.assert_close(y, torch.sin(x) + torch.sin(4 * x))
    assert m1[0].weight.shape == (1000, 1)
    assert m1[2].weight.shape == (1, 1000)
    for a, b, c in zip(m1.parameters(), m2.parameters(), m3.parameters(), strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
    small, xs, _ = make_seed_problem(width=7, n=11)
    assert small[0].weight.shape == (7, 1)
    assert xs.shape == (11, 1)
    with pytest.raises(ValueError, match="width"):
        make_seed_problem(width=0)


@dataclass
class Trace:
    losses: list[float] = field(default_factory=list)
    ratio: list[float] = field(default_factory=list)  # r = η·λ_grad/2 at θ_i (exact HVP)
    rho: list[float] = field(default_factory=list)  # ‖g‖/‖√v̂‖
    secant: dict[int, float] = field(default_factory=dict)  # r_sec along θ_i → θ_{i+1}
    top: dict[int, TopCurvature] = field(default_factory=dict)


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float32 reductions in a fixed order: a reproducible trajectory
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(steps: int) -> Trace:
    model, x, y = make_seed_problem(seed=0)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=0.01, betas=(0.9, 0.999))
    trace = Trace()
    secant = SecantEstimator()
    top = TopEigen(max_iters=50, tol=1e-3)
    current: dict[str, Any] = {}

    def pre_step(o: Any, *_: Any) -> None:
        # The measurement moment: θ_i and g_i present, Adam state still at step i.
        views = adam_view(o)
        hvp = current["hvp"]
        trace.ratio.append(float(gradient_curvature(views, hvp).stability_ratio))
        g2 = sum(effective_grad(v).square().sum() for v in views)
        v2 = sum(bias_corrected_v(v, include_current_grad=True).sum() for v in views)
        trace.rho.append(math.sqrt(float(g2) / float(v2)))
        reading = secant.before_step(views)
        if reading is not None:
            trace.secant[reading.step - 1] = float(reading.stability_ratio)
        i = views[0].step
        if i >= 500 and i % TOP_EVERY == 0:
            trace.top[i] = top(views, hvp)

    opt.register_step_pre_hook(pre_step)
    opt.register_step_post_hook(lambda o, *_: secant.after_step(adam_view(o)))
    for _ in range(steps):
        loss = ((model(x) - y) ** 2).mean()
        hvp = ExactHVP(loss, params)
        for p, g in zip(params, hvp.gradient(), strict=True):
            p.grad = g
        current["hvp"] = hvp
        trace.losses.append(float(loss.detach()))
        opt.step()
    return trace


def _run_start(values: dict[int, float] | list[float], onset: int, lookback: int = 40) -> int:
    """First index of the run of values >= 1 that is in progress just before ``onset``."""
    get = values.get if isinstance(values, dict) else (lambda i: values[i])
    end = next(i for i in range(onset, onset - 6, -1) if (get(i) or 0.0) >= 1.0)
    start = end
    while start - 1 > onset - lookback and (get(start - 1) or 0.0) >= 1.0:
        start -= 1
    return start


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_lambda_grad_crosses_two_over_eta_before_each_spike() -> None:
    trace = _train(STEPS)
    onsets = spike_onsets(list(enumerate(trace.losses)), factor=2.0, window=50, quiet=50)
    assert len(onsets) >= 3, onsets  # spikes repeatedly ...
    assert onsets[0] >= 300  # ... after a few hundred steps of quiet training
    leads, secant_leads = [], []
    for o in onsets:
        # λ_grad > 2/η (r ≥ 1) for several consecutive steps, up to just before the onset
        start = _run_start(trace.ratio, o)
        run = trace.ratio[start : o - 2]
        assert o - start >= 8, (o, start, trace.ratio[o - 40 : o + 1])
        assert min(run) >= 1.0, (o, start, trace.ratio[o - 40 : o + 1])
        leads.append(o - start)
        # the secant along the update crosses later: a shorter warning
        sec_start = _run_start(trace.secant, o)
        assert 1 <= o - sec_start < o - start
        secant_leads.append(o - sec_start)
        # quiet phase before: ‖g‖ ≪ ‖√v̂‖, v decays; at the onset the gradient has caught up
        quiet = sorted(trace.rho[o - 60 : o - 20])
        assert quiet[len(quiet) // 2] < 0.1
        assert trace.rho[o] > 10 * quiet[len(quiet) // 2]
        # just before the spike the gradient lies along the top preconditioned eigendirection
        near = [trace.top[i] for i in trace.top if o - 20 <= i < o]
        assert any(float(t.stability_ratio) >= 1.0 and float(t.grad_cos) > 0.99 for t in near)
    # a full-length quiet stretch long before the first spike stays below the edge
    assert max(trace.ratio[100:400]) < 1.1
    print(f"onsets={onsets} lambda_grad leads={leads} secant leads={secant_leads}")
