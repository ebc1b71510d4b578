"""The two-secant curvature: exact algebra on quadratics, agreement with the exact (closure) λ along
D⁻¹g, every optimizer variant it claims, and the spike lead on the seed experiment."""

from __future__ import annotations

import copy
import math
import statistics
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from spikewatch.monitor import two_secant
from spikewatch.monitor.adam_state import UnsupportedOptimizer, adam_view
from spikewatch.monitor.coordinate_sample import default_fraction
from spikewatch.monitor.secant import SecantEstimator
from spikewatch.monitor.two_secant import BYTES_PER_COORD, V_RESYNC, TwoSecant

F64 = torch.float64


def _spd(n: int, seed: int = 0, lo: float = -1.0, hi: float = 2.0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    out: Tensor = (q * torch.logspace(lo, hi, n, dtype=F64)) @ q.T
    return out


class _Quad(nn.Module):
    """½θᵀAθ over two parameter tensors (so groups and per-tensor sampling are exercised)."""

    def __init__(self, a: Tensor, dtype: torch.dtype = F64, seed: int = 1) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        n = a.shape[0]
        x = torch.randn(n, generator=gen, dtype=F64)
        self.register_buffer("a", a)
        self.p = nn.Parameter(x[: n // 2].to(dtype))
        self.q = nn.Parameter(x[n // 2:].to(dtype))

    def theta(self) -> Tensor:
        return torch.cat((self.p, self.q)).to(F64)

    def forward(self) -> Tensor:
        th = self.theta()
        a: Tensor = self.a  # type: ignore[assignment]
        return 0.5 * th @ a @ th


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, est: TwoSecant,
           before_step: Callable[[int], None] | None = None,
           loss_fn: Callable[[], Tensor] | None = None) -> dict[int, tuple[float, float, float]]:
    """Train; readings by gradient index: (λ, r, ρ)."""
    out: dict[int, tuple[float, float, float]] = {}
    for k in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = model() if loss_fn is None else loss_fn()
        loss.backward()
        if before_step is not None:
            before_step(k)
        opt.step()
        r = est.update(k + 1)
        if r is not None:
            out[r.step] = (float(r.lambda_two_secant), float(r.stability_ratio), float(r.rho))
    return out


def _history(model: _Quad, opt: torch.optim.Optimizer, steps: int,
             clip: float | None = None) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """θ^k, the gradient the optimizer used at step k+1 (after clipping) and v after k+1 steps."""
    thetas, grads, vs = [], [], []
    for _ in range(steps):
        thetas.append(model.theta().detach().clone())
        opt.zero_grad(set_to_none=True)
        model().backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        grads.append(torch.cat([p.grad.to(F64) for p in (model.p, model.q)]))  # type: ignore[union-attr]
        opt.step()
        st = opt.state
        if "exp_avg_sq" in st[model.p]:
            vs.append(torch.cat([st[p]["exp_avg_sq"].to(F64) for p in (model.p, model.q)]))
    thetas.append(model.theta().detach().clone())
    return thetas, grads, vs


def _reference(thetas: list[Tensor], grads: list[Tensor], vs: list[Tensor], i: int,
               lr: float | list[float], b1: float, b2: float, eps: float, decay: float = 0.0
               ) -> float:
    """The ratio the estimator must give for gradient i, from the recorded trajectory: d from
    the applied updates, H·d from the gradient differences, D from v after step i+1. `lr`: one
    for every step, or each step's (`lr[k]` moved θ^k to θ^{k+1})."""
    lrs = lr if isinstance(lr, list) else [lr] * len(thetas)
    lr = lrs[i]
    b1_now, b1_then = 1 - b1 ** (i + 1), 1 - b1 ** i
    a = (b1_now / lr) / (1 - b1)
    b = -b1 * (b1_then / lrs[i - 1]) / (1 - b1)
    dth = [thetas[j + 1] - thetas[j] for j in (i, i - 1)]
    dg = [grads[j + 1] - grads[j] for j in (i, i - 1)]
    d = a * dth[0] + b * dth[1]
    hd = a * dg[0] + b * dg[1]
    dmat = (vs[i] / (1 - b2 ** (i + 1))).sqrt() + eps
    c = (1 - b1) / ((1 + b1) * b1_now)
    lam = c * float(d @ hd) / float(d @ (dmat * d))
    return lr * (lam + decay) / 2


@pytest.mark.parametrize("kind", ["adam", "adamw", "adam-l2", "amsgrad", "foreach", "clip",
                                  "schedule"])
def test_reading_is_the_quotient_of_the_applied_updates_and_gradient_differences(kind: str
                                                                                 ) -> None:
    """Exact algebra: with every coordinate sampled, the ratio equals c·dᵀ(Hd)/dᵀDd for the d
    rebuilt from the updates really applied (after clipping, with decay, with an lr that
    changes at every step) and H·d from the gradient differences the optimizer used."""
    model = _Quad(_spd(40))
    lr, betas, eps = 0.02, (0.9, 0.99), 1e-8
    decay = 0.0
    if kind == "adamw":
        decay = 0.1
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas,
                                                       eps=eps, weight_decay=decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas, eps=eps,
                               weight_decay=0.05 if kind == "adam-l2" else 0.0,
                               amsgrad=kind == "amsgrad", foreach=kind == "foreach")
    est = TwoSecant(opt, fraction=1.0, smoothing=0.0)
    clip = 0.5 if kind == "clip" else None
    norms: list[float] = []
    readings: dict[int, float] = {}
    thetas, grads, vs = [], [], []
    lrs: list[float] = []
    for k in range(60):
        if kind == "schedule":  # a warm-up then a decay: the lr moves at every step
            opt.param_groups[0]["lr"] = lr * min(1.0, (k + 1) / 10) * (1.0 - 0.005 * k)
        lrs.append(float(opt.param_groups[0]["lr"]))
        thetas.append(model.theta().detach().clone())
        opt.zero_grad(set_to_none=True)
        model().backward()
        if clip is not None:
            norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), clip)))
        g = torch.cat([p.grad.to(F64) for p in (model.p, model.q)])  # type: ignore[union-attr]
        if kind == "adam-l2":
            g = g + 0.05 * thetas[-1]  # the effective gradient Adam uses
        grads.append(g)
        opt.step()
        key = "max_exp_avg_sq" if kind == "amsgrad" else "exp_avg_sq"
        vs.append(torch.cat([opt.state[p][key].to(F64) for p in (model.p, model.q)]))
        r = est.update(k + 1)
        if r is not None:
            readings[r.step] = float(r.stability_ratio)
    thetas.append(model.theta().detach().clone())
    assert sorted(readings) == list(range(2, 59))  # from the fourth step on, every step
    for i, got in readings.items():
        want = _reference(thetas, grads, vs, i, lrs, *betas, eps, decay)
        assert got == pytest.approx(want, rel=1e-6), (kind, i)
    if clip is not None:  # clipping was active throughout
        assert min(norms) > clip


def _exact_ratio(model: nn.Module, loss_fn: Callable[[], Tensor], opt: torch.optim.Adam,
                 k: int) -> float:
    """c·(D⁻¹g)ᵀH(D⁻¹g)/(gᵀD⁻¹g)·η/2 at the pre-step of step k+1, by double backward."""
    params = [p for p in model.parameters()]
    h = opt.param_groups[0]
    b1, b2 = h["betas"]
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    pvec, gd = [], []
    for p, g in zip(params, grads, strict=True):
        st = opt.state.get(p)
        g0 = g.detach()
        v = (st["exp_avg_sq"] * b2 if st else 0.0) + (1 - b2) * g0 * g0
        d = (v / (1 - b2 ** (k + 1))).sqrt() + h["eps"]
        pvec.append(g0 / d)
        gd.append((g0 * g0 / d).sum())
    hp = torch.autograd.grad(grads, params, grad_outputs=pvec)
    c = (1 - b1) / ((1 + b1) * (1 - b1 ** (k + 1)))
    quad = sum(float((x * y).sum()) for x, y in zip(pvec, hp, strict=True))
    ratio: float = float(h["lr"]) * c * quad / float(sum(gd)) / 2
    return ratio


def test_agrees_with_the_exact_curvature_along_the_preconditioned_gradient() -> None:
    """On a quadratic, the only approximation is D moving between two steps: within 2 %."""
    model = _Quad(_spd(64))
    opt = torch.optim.Adam(model.parameters(), lr=0.02, betas=(0.9, 0.99))
    est = TwoSecant(opt, fraction=1.0, smoothing=0.0)
    exact: dict[int, float] = {}
    got: dict[int, float] = {}
    for k in range(300):
        exact[k] = _exact_ratio(model, model, opt, k)
        opt.zero_grad(set_to_none=True)
        model().backward()
        opt.step()
        r = est.update(k + 1)
        if r is not None:
            got[r.step] = float(r.stability_ratio)
    late = [i for i in got if i >= 100]
    assert late
    for i in late:
        assert got[i] == pytest.approx(exact[i], rel=0.02), i


@pytest.mark.parametrize(("momentum", "dampening"), [(0.0, 0.0), (0.9, 0.0), (0.9, 0.1)])
def test_heavy_ball_sgd_is_exact_on_a_quadratic(momentum: float, dampening: float) -> None:
    """SGD has no preconditioner to move: d = g exactly, so r = η(1−δ)·gᵀAg/(gᵀg)/(2(1+μ))."""
    a = _spd(32)
    model = _Quad(a)
    lr = 0.004
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, dampening=dampening)
    est = TwoSecant(opt, fraction=1.0, smoothing=0.0)
    grads: dict[int, Tensor] = {}
    got: dict[int, float] = {}
    for k in range(40):
        opt.zero_grad(set_to_none=True)
        model().backward()
        grads[k] = torch.cat([p.grad.to(F64) for p in (model.p, model.q)])  # type: ignore[union-attr]
        opt.step()
        r = est.update(k + 1)
        if r is not None:
            got[r.step] = float(r.stability_ratio)
    assert got
    damp = 1 - dampening if momentum else 1.0
    for i, ratio in got.items():
        g = grads[i]
        want = lr * damp * float(g @ a @ g) / float(g @ g) / (2 * (1 + momentum))
        assert ratio == pytest.approx(want, rel=1e-6), i


def test_several_groups_combine_through_the_eta_weighted_operator() -> None:
    """Two groups with different lr: r = ½Σdᵀ(Hd)/Σdᵀ(D/(ηc))d with each group's d ≈ D⁻¹g,
    which for equal lr is the one-group ratio."""
    a = _spd(40)

    def run(lrs: tuple[float, float]) -> dict[int, tuple[float, float, float]]:
        model = _Quad(a)
        opt = torch.optim.Adam([{"params": [model.p], "lr": lrs[0]},
                                {"params": [model.q], "lr": lrs[1]}], betas=(0.9, 0.99))
        return _train(model, opt, 80, TwoSecant(opt, fraction=1.0, smoothing=0.0))

    single = _train(m := _Quad(a), o := torch.optim.Adam(m.parameters(), lr=0.02,
                                                         betas=(0.9, 0.99)),
                    80, TwoSecant(o, fraction=1.0, smoothing=0.0))
    same = run((0.02, 0.02))
    for i in single:
        assert same[i][1] == pytest.approx(single[i][1], rel=1e-6)
    mixed = run((0.02, 0.005))
    assert all(math.isfinite(x[1]) and x[1] > 0 for x in mixed.values())
    # the slower group damps the mixed ratio below the all-fast one
    late = [i for i in mixed if i > 40]
    assert sum(mixed[i][1] for i in late) < sum(single[i][1] for i in late)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_floating_dtype(dtype: torch.dtype) -> None:
    """Parameters and state in any floating dtype give finite readings whose level matches the
    float64 run's; half precision rounds each applied update, so its readings are noisier."""
    a = _spd(64, lo=0.0, hi=2.0)

    def run(dt: torch.dtype) -> list[float]:
        model = _Quad(a, dt)
        opt = torch.optim.Adam(model.parameters(), lr=0.05, betas=(0.9, 0.99), eps=1e-4)
        got = _train(model, opt, 40, TwoSecant(opt, fraction=1.0, smoothing=0.0))
        assert sorted(got) == list(range(2, 39))
        assert all(math.isfinite(x) for r in got.values() for x in r)
        return [r[1] for r in got.values()]

    want, got = statistics.median(run(F64)), statistics.median(run(dtype))
    tol = {torch.float32: 1e-3, torch.float16: 0.2, torch.bfloat16: 0.5}[dtype]
    assert got == pytest.approx(want, rel=tol)


def test_gradient_accumulation_uses_the_accumulated_gradient() -> None:
    """Micro-batches accumulated into one step: the same readings as the full batch at once."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 8, dtype=F64), torch.randn(64, 1, dtype=F64)

    def run(chunks: int) -> dict[int, float]:
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)).to(F64)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        est = TwoSecant(opt, fraction=1.0, smoothing=0.0)
        out = {}
        for k in range(30):
            opt.zero_grad(set_to_none=True)
            for xc, yc in zip(x.chunk(chunks), y.chunk(chunks), strict=True):
                torch.autograd.backward(
                    nn.functional.mse_loss(model(xc), yc, reduction="sum") / len(x))
            opt.step()
            r = est.update(k + 1)
            if r is not None:
                out[r.step] = float(r.stability_ratio)
        return out

    whole, accumulated = run(1), run(4)
    assert whole
    for i in whole:
        assert accumulated[i] == pytest.approx(whole[i], rel=1e-6)


def test_history_restarts_after_a_step_it_did_not_see() -> None:
    model = _Quad(_spd(32))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    est = TwoSecant(opt, fraction=1.0, smoothing=0.0)
    seen = []
    for k in range(12):
        opt.zero_grad()
        model().backward()
        opt.step()
        if k == 6:
            continue  # the hook missed step 7
        if est.update(k + 1) is not None:
            seen.append(k + 1)
    assert seen == [4, 5, 6, 11, 12]  # four consecutive steps before each reading


@pytest.mark.parametrize("amsgrad", [False, True])
def test_recorded_steps_flushed_in_batches_give_the_readings_of_every_step(amsgrad: bool
                                                                           ) -> None:
    """`record` + `flush` every few steps is `update` every step, bit for bit: across a step
    the hook did not see, a read of v from the state inside a batch (V_RESYNC) and AMSGrad,
    whose v is read at every step."""
    def run(flush_every: int) -> dict[int, list[float]]:
        model = _Quad(_spd(32), dtype=torch.float32)
        opt = torch.optim.Adam(model.parameters(), lr=0.02, amsgrad=amsgrad)
        est = TwoSecant(opt, fraction=1.0)
        got: dict[int, list[float]] = {}
        for k in range(V_RESYNC + 30):
            opt.zero_grad()
            model().backward()
            opt.step()
            if k == 40:
                continue  # the hook missed this step
            if flush_every == 1:
                readings = [r for r in [est.update(k + 1)] if r is not None]
            else:
                est.record(k + 1)
                readings = est.flush() if est.pending >= flush_every else []
            for r in readings:
                got[r.step] = r.values.tolist()
        got.update({r.step: r.values.tolist() for r in est.flush()})
        return got

    every = run(1)
    assert len(every) == V_RESYNC + 30 - 1 - 2 * 3  # one missed; 4 consecutive steps per reading
    for batch in (3, 4, 7):
        assert run(batch) == every


def test_readings_recover_after_a_rollback_from_a_non_finite_step() -> None:
    """A NaN gradient makes NaN readings; once the job restores a checkpoint (what a guard
    does), the readings are finite again instead of staying poisoned by their average."""
    model = _Quad(_spd(32))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    est = TwoSecant(opt, fraction=1.0)
    saved = None
    values: dict[int, float] = {}
    for k in range(24):
        opt.zero_grad()
        model().backward()
        if k == 10:
            saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        if k == 12:
            for p in model.parameters():
                assert p.grad is not None
                p.grad.fill_(float("nan"))
        opt.step()
        if k == 14:
            assert saved is not None
            model.load_state_dict(saved[0])
            opt.load_state_dict(saved[1])
        reading = est.update(k + 1)
        if reading is not None:
            values[reading.step] = float(reading.values[0])
    assert any(math.isnan(v) for v in values.values())
    last = max(values)
    assert math.isfinite(values[last])
    assert values[last] > 0


def test_refuses_what_it_cannot_read() -> None:
    p = nn.Parameter(torch.zeros(32))
    with pytest.raises(UnsupportedOptimizer, match="Nesterov"):
        TwoSecant(torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True))
    with pytest.raises(UnsupportedOptimizer, match="RMSprop"):
        TwoSecant(torch.optim.RMSprop([p], lr=0.1))
    with pytest.raises(ValueError, match="fraction"):
        TwoSecant(torch.optim.Adam([p]), fraction=0.0)


def test_default_sample_keeps_one_percent_of_the_model_bytes() -> None:
    big = [torch.zeros(1024, 1024), torch.zeros(1024)]  # 4 MiB of float32
    frac = default_fraction(big, bytes_per_coord=BYTES_PER_COORD)
    assert frac * sum(t.numel() for t in big) * BYTES_PER_COORD <= 0.01 * 4 * (1024 * 1024 + 1024)
    p = nn.Parameter(torch.randn(1024, 1024))
    opt = torch.optim.Adam([p], lr=1e-3)
    est = TwoSecant(opt)
    for k in range(2):
        p.grad = torch.randn_like(p)
        opt.step()
        est.update(k + 1)
    assert 0 < est.memory_bytes <= 0.011 * p.numel() * 4
    tiny = [torch.zeros(3000)]  # a 12 KB model gets the floor of 512 coordinates
    assert default_fraction(tiny, bytes_per_coord=BYTES_PER_COORD) * 3000 == pytest.approx(512)


def test_values_are_their_sums_quotients() -> None:
    model = _Quad(_spd(32))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    est = TwoSecant(opt, fraction=1.0, smoothing=0.0)
    reading = None
    for k in range(10):
        opt.zero_grad()
        model().backward()
        opt.step()
        reading = est.update(k + 1) or reading
    assert reading is not None
    q = reading.num / reading.den
    assert float(reading.lambda_two_secant) == pytest.approx(float(q[0]), rel=1e-6)
    assert float(reading.stability_ratio) == pytest.approx(float(q[1]), rel=1e-6)
    assert float(reading.rho) == pytest.approx(math.sqrt(float(q[2])), rel=1e-6)
    assert reading.values.dtype == torch.float32


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_its_plain_secant_is_the_full_secant_estimator(kind: str) -> None:
    """The momentum-direction secant it streams beside the two-secant equals
    `monitor.secant` (every coordinate, rebuilt from the state) on the same update."""
    model = _Quad(_spd(40))
    cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    opt = cls(model.parameters(), lr=0.02, betas=(0.9, 0.99),
              weight_decay=0.0 if kind == "adam" else 0.1)
    est = TwoSecant(opt, fraction=1.0, smoothing=0.0)
    full = SecantEstimator()
    want: dict[int, float] = {}
    got: dict[int, float] = {}
    for k in range(30):
        opt.zero_grad()
        model().backward()
        r = full.before_step(adam_view(opt))
        if r is not None:
            want[r.step] = float(r.stability_ratio)  # the update of step r.step (1-based)
        opt.step()
        full.after_step(adam_view(opt))
        reading = est.update(k + 1)
        if reading is not None:  # gradient i's update is step i + 1
            got[reading.step + 1] = float(reading.stability_ratio_secant)
    common = sorted(set(got) & set(want))
    assert len(common) >= 20
    for s in common:
        assert got[s] == pytest.approx(want[s], rel=1e-5), s


def test_an_lr_schedule_adds_nothing_to_what_it_keeps() -> None:
    """A schedule moves the lr at every step, so each step's constants are rebuilt; nothing is
    kept per lr value: the estimator's memory stays flat over hundreds of distinct rates."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    x = torch.randn(64, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + 0.01 * s))
    est = TwoSecant(opt)
    made = 0

    def train(steps: int) -> None:
        nonlocal made
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt.step()
            made += est.update(schedule.last_epoch + 1) is not None
            schedule.step()

    tracemalloc.start()  # traced from the start: what the estimator holds now and then is no diff
    try:
        train(20)
        before = tracemalloc.take_snapshot()
        train(300)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert made == 320 - 3  # a reading at every step from the fourth
    package = Path(two_secant.__file__).parent
    kept = sum(d.size_diff for d in after.compare_to(before, "filename")
               if Path(d.traceback[0].filename).parent == package)
    assert kept < 16_000, f"{kept} bytes kept after 300 learning rates"
