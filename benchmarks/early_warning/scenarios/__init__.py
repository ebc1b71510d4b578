"""Deterministic CPU training scenarios for the early-warning benchmark, built in code.

Each scenario is a training problem that spikes, or a stable control next to it (`control=True`),
in one family: regression-mlp, quadratic, cnn, transformer, minibatch, hparam-jump.
`Scenario.build()` returns a fresh `Task` (see `_base.Task` for the training loop it implies).
Everything is float32 on the CPU, seeded (data from seeded generators, models initialised from
their own seed), so two builds train bit for bit the same on one machine.

Ground truth is `server.backtest.spike_onsets` on the loss, or for minibatch scenarios on the
full-data / held-out `eval_loss`. The `# seen:` comments are what
`python -m benchmarks.early_warning.survey` printed on the development machine without the agent
(onsets, and the peak rise loss[t]/min(loss[t−50 .. t−1]): 2 = a spike); the trajectories are
chaotic and differ between CPUs and torch builds, so nothing may depend on those step numbers.
The edges (the smallest learning rate at which a family starts to spike within its step budget)
come from `survey --edge LABEL` (see EDGES and docs/early-warning.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.early_warning.scenarios._base import Scenario, Task, at
from benchmarks.early_warning.scenarios._cnn import cnn
from benchmarks.early_warning.scenarios._mlp import mlp, mlp_deep, mlp_minibatch, mlp_sgd
from benchmarks.early_warning.scenarios._quadratic import quadratic
from benchmarks.early_warning.scenarios._transformer import transformer_pool, transformer_stream
from benchmarks.early_warning.scenarios._variants import variant

__all__ = ["EDGES", "FAMILIES", "QUICK", "SCENARIOS", "EdgeSweep", "Scenario", "Task", "by_name"]

MLP, QUAD, CNN, TF, MB, HP = ("regression-mlp", "quadratic", "cnn", "transformer", "minibatch",
                              "hparam-jump")  # fmt: skip
FAMILIES: tuple[str, ...] = (MLP, QUAD, CNN, TF, MB, HP)
MLP_STEPS, CNN_STEPS, TF_STEPS, MB_STEPS = 1500, 1500, 1500, 3000


def _s(name: str, family: str, control: bool, steps: int, build: Callable[[], Task],
       minibatch: bool = False) -> Scenario:  # fmt: skip
    return Scenario(name, family, control, steps, build, minibatch)


def _spike(name: str, family: str, steps: int, build: Callable[[], Task]) -> Scenario:
    return _s(name, family, False, steps, build, family == MB)


def _control(name: str, family: str, steps: int, build: Callable[[], Task]) -> Scenario:
    return _s(name, family, True, steps, build, family == MB)


SCENARIOS: tuple[Scenario, ...] = (
    # --- regression-mlp: the seed problem, full batch, Adam(β=(0.9, 0.999)), 1500 steps.
    # The loss plateaus near 0.06 after a few hundred steps with a vanishing gradient; √v̂ decays
    # and the preconditioned curvature crosses 2/η: repeated spikes of 2–10×. Edge over 5 seeds:
    # w1000 spikes from lr 0.0015 (1/5 seeds; 5/5 at 0.003), w500 from 0.004 (2/5; 5/5 at 0.005).
    # seen: 732,853,1018,1229,1494 (peak rise 8.84)
    _spike("mlp-w1000-lr0.01-s0", MLP, MLP_STEPS, mlp(1000, 0.01, 0)),
    # seen: 1166,1301,1477 (peak rise 6.59)
    _spike("mlp-w1000-lr0.01-s1", MLP, MLP_STEPS, mlp(1000, 0.01, 1)),
    # seen: 579,719,887,1079,1293 (peak rise 5.08)
    _spike("mlp-w500-lr0.01-s2", MLP, MLP_STEPS, mlp(500, 0.01, 2)),
    # seen: 863,1033,1237,1460 (peak rise 4.26)
    _spike("mlp-w1000-lr0.005-s0", MLP, MLP_STEPS, mlp(1000, 0.005, 0)),
    # 2× the w1000 edge: late, few onsets
    # seen: 1123,1334 (peak rise 2.59)
    _spike("mlp-w1000-lr0.003-s3", MLP, MLP_STEPS, mlp(1000, 0.003, 3)),
    # 1.25× the w500 edge
    # seen: 856,1065,1285,1489 (peak rise 2.34)
    _spike("mlp-w500-lr0.005-s4", MLP, MLP_STEPS, mlp(500, 0.005, 4)),
    # the widest net spikes at a learning rate where w1000 mostly does not
    # seen: 1127,1243,1367 (peak rise 16)
    _spike("mlp-w2000-lr0.002-s0", MLP, MLP_STEPS, mlp(2000, 0.002, 0)),
    # near-edge controls: 0.67× the w1000 edge and 0.75× the w500 edge, no spike on 5 seeds
    # seen: no onset (peak rise 1.09)
    _control("mlp-w1000-lr0.001-s0", MLP, MLP_STEPS, mlp(1000, 0.001, 0)),
    # seen: no onset (peak rise 1.06)
    _control("mlp-w1000-lr0.001-s1", MLP, MLP_STEPS, mlp(1000, 0.001, 1)),
    # seen: no onset (peak rise 1.42)
    _control("mlp-w1000-lr0.001-s2", MLP, MLP_STEPS, mlp(1000, 0.001, 2)),
    # seen: no onset (peak rise 1.40)
    _control("mlp-w500-lr0.003-s0", MLP, MLP_STEPS, mlp(500, 0.003, 0)),
    # seen: no onset (peak rise 1.48)
    _control("mlp-w500-lr0.003-s1", MLP, MLP_STEPS, mlp(500, 0.003, 1)),
    # seen: no onset (peak rise 1.50)
    _control("mlp-w500-lr0.003-s2", MLP, MLP_STEPS, mlp(500, 0.003, 2)),
    # far-below control (0.25× the w500 edge), and lr 0.01 made stable by ε = 0.1 (ε = 1e-3 and
    # 1e-2 still spike): ε, not √v̂, bounds the step
    # seen: no onset (peak rise 1.02)
    _control("mlp-w500-lr0.001-s2", MLP, MLP_STEPS, mlp(500, 0.001, 2)),
    # seen: no onset (peak rise 1.08)
    _control("mlp-w1000-lr0.01-eps0.1-s0", MLP, MLP_STEPS, mlp(1000, 0.01, 0, eps=0.1)),
    # AdamW (decoupled weight decay 0.01): the same mechanism, the same kind of control
    # seen: 682,840,1029,1250 (peak rise 6.45)
    _spike("mlp-adamw-wd0.01-lr0.01-s0", MLP, MLP_STEPS, mlp(1000, 0.01, 0, weight_decay=0.01)),
    # seen: 1322 (peak rise 3.09)
    _spike("mlp-adamw-wd0.01-lr0.01-s1", MLP, MLP_STEPS, mlp(1000, 0.01, 1, weight_decay=0.01)),
    # seen: no onset (peak rise 1.40)
    _control("mlp-adamw-wd0.01-lr0.001-s2", MLP, MLP_STEPS,
             mlp(1000, 0.001, 2, weight_decay=0.01)),
    # a deeper net on the same data (3 hidden ReLU layers of 64): it fits the target to ~1e-4
    # and its spikes are violent (17–77×). Edge over 3 seeds: lr 0.0002 0/3 (the loss falls
    # monotonically), 0.0003 1/3, 0.001 3/3; the control sits at 0.67× the edge.
    # seen: 525,604,687,832,975,1128,1291,1439 (peak rise 76.6)
    _spike("mlp-deep3x64-lr0.001-s0", MLP, MLP_STEPS, mlp_deep(64, 3, 0.001, 0)),
    # seen: 565,713,910,1107,1347 (peak rise 57.9)
    _spike("mlp-deep3x64-lr0.001-s1", MLP, MLP_STEPS, mlp_deep(64, 3, 0.001, 1)),
    # seen: no onset (peak rise 1.00)
    _control("mlp-deep3x64-lr0.0002-s2", MLP, MLP_STEPS, mlp_deep(64, 3, 0.0002, 2)),
    # --- quadratic: ½Σλᵢθᵢ² + 1e-3, 20 dims, λ log-spaced 1..100, Adam lr 0.05, β2 0.99, 800 steps.
    # Once θ has converged the gradient vanishes, √v̂ decays ~0.995 per step until the largest
    # λ direction is unstable: clean, repeated spikes. (Seed 1 is left out: its Adam warm-up
    # oscillation counts as an onset at step ~51, in the ε controls too.)
    # seen: 463,640,751 (peak rise 6.93)
    _spike("quad-b2-0.99", QUAD, 800, quadratic(0.05, 1e-8, 0.99, 0)),
    # seen: 563,650 (peak rise 7.51)
    _spike("quad-b2-0.99-s2", QUAD, 800, quadratic(0.05, 1e-8, 0.99, 2)),
    # ε bounds the step: stable when η·λ_max·(1−β1)/((1+β1)·ε) < 2, i.e. ε > 0.13 here; ε = 0.1
    # sits just past that edge (bounded 1.45× oscillation, no spike), ε = 0.5 well inside it
    # seen: no onset (peak rise 1.45)
    _control("quad-b2-0.99-eps0.1", QUAD, 800, quadratic(0.05, 0.1, 0.99, 0)),
    # seen: no onset (peak rise 1.04)
    _control("quad-b2-0.99-eps0.5", QUAD, 800, quadratic(0.05, 0.5, 0.99, 0)),
    # --- cnn: tanh CNN, 253 parameters, 288 noisy 8×8 images (floor ≈ 1.2e-3, see _cnn.py),
    # full batch, Adam β2 0.999, 1500 steps. At the floor the gradient vanishes and √v̂ decays:
    # spikes of 3–6× on it. Edge over 4 seeds: lr 0.006 and 0.007 0/4, 0.01 2/4, 0.015 and 0.02
    # 4/4.
    # seen: 637,816,931,1046,1175,1302,1424 (peak rise 4.96)
    _spike("cnn-lr0.02-s0", CNN, CNN_STEPS, cnn(0.02, 0)),
    # seen: 641,729,820,969,1157,1317,1455 (peak rise 4.64)
    _spike("cnn-lr0.02-s1", CNN, CNN_STEPS, cnn(0.02, 1)),
    # seen: 426,554,752,920,1092,1276,1492 (peak rise 6.16)
    _spike("cnn-lr0.015-s3", CNN, CNN_STEPS, cnn(0.015, 3)),
    # right at the edge (2 of 4 seeds spike at lr 0.01; this is one of them)
    # seen: 714,963,1220,1494 (peak rise 3.3)
    _spike("cnn-lr0.01-s3", CNN, CNN_STEPS, cnn(0.01, 3)),
    # near-edge controls (0.7× and 0.6× the edge, no spike on 4 seeds; peak rises there reach
    # 1.6–1.8× on some seeds, these two stay ≤ 1.3×) and a far-below one (0.3×)
    # seen: no onset (peak rise 1.08)
    _control("cnn-lr0.007-s2", CNN, CNN_STEPS, cnn(0.007, 2)),
    # seen: no onset (peak rise 1.23)
    _control("cnn-lr0.006-s1", CNN, CNN_STEPS, cnn(0.006, 1)),
    # seen: no onset (peak rise 1.00)
    _control("cnn-lr0.003-s1", CNN, CNN_STEPS, cnn(0.003, 1)),
    # --- transformer: 1–2 pre-LN blocks (d 16, 2 heads), reversing a fixed pool of 64 random
    # 8-token sequences, each twice with independent 2 % label noise (a floor of ~0.02–0.035
    # nats where the copies disagree), full batch, Adam β2 0.99, 1500 steps. The rest is learned
    # perfectly, the gradient vanishes, √v̂ decays: spikes of 2.5–25× (40–70× with 2 blocks or
    # β2 0.999).
    # Edge (1 block, 4 seeds): lr 0.005 0/4, 0.007 0/4, 0.01 2/4, 0.02 4/4, 0.03 4/4.
    # seen: 504,1208 (peak rise 10.2)
    _spike("tf-L1-lr0.03-s0", TF, TF_STEPS, transformer_pool(0.03, 0)),
    # seen: 641,1063,1464 (peak rise 25.4)
    _spike("tf-L1-lr0.03-s1", TF, TF_STEPS, transformer_pool(0.03, 1)),
    # seen: 551,1342 (peak rise 10.2)
    _spike("tf-L1-lr0.02-s2", TF, TF_STEPS, transformer_pool(0.02, 2)),
    # seen: 559 (peak rise 49.5)
    _spike("tf-L2-lr0.03-s0", TF, TF_STEPS, transformer_pool(0.03, 0, layers=2)),
    # seen: 823,1255 (peak rise 43.6)
    _spike("tf-L2-lr0.03-s1", TF, TF_STEPS, transformer_pool(0.03, 1, layers=2)),
    # right at the edge (2 of 4 seeds spike at lr 0.01; this is one of them)
    # seen: 822 (peak rise 2.47)
    _spike("tf-L1-lr0.01-s2", TF, TF_STEPS, transformer_pool(0.01, 2)),
    # β2 0.999: √v̂ decays 10× slower, it takes a higher lr (0.03 spiked on 1 of 2 seeds)
    # seen: 1133 (peak rise 67.6)
    _spike("tf-L1-b2-0.999-lr0.05-s0", TF, TF_STEPS,
           transformer_pool(0.05, 0, beta2=0.999)),
    # seen: 304,476,727 (peak rise 12)
    _spike("tf-L1-b2-0.999-lr0.05-s1", TF, TF_STEPS,
           transformer_pool(0.05, 1, beta2=0.999)),
    # near-edge controls (0.7× the edge, no spike on 4 seeds) and a far-below one (0.3×)
    # seen: no onset (peak rise 1.06)
    _control("tf-L1-lr0.007-s0", TF, TF_STEPS, transformer_pool(0.007, 0)),
    # seen: no onset (peak rise 1.05)
    _control("tf-L1-lr0.007-s1", TF, TF_STEPS, transformer_pool(0.007, 1)),
    # seen: no onset (peak rise 1.03)
    _control("tf-L1-lr0.003-s2", TF, TF_STEPS, transformer_pool(0.003, 2)),
    # --- minibatch: ground truth is eval_loss (full data / a held-out batch), not the batch loss.
    # The seed MLP (w1000, Adam β2 0.999) on batches of 32 of its 200 points, reshuffled every
    # epoch, 3000 steps: the full-data loss jumps 2–6× again and again (DESIGN.md: no curvature
    # signal announced these so far). Edge over 4 seeds: lr 0.0005 0/4, 0.0006 2/4, 0.0008 4/4.
    # seen: 19 onsets, 427…2916 (peak rise 5.65)
    _spike("mb-mlp-lr0.002-s0", MB, MB_STEPS, mlp_minibatch(1000, 0.002, 0)),
    # seen: 13 onsets, 730…2968 (peak rise 6.27)
    _spike("mb-mlp-lr0.002-s1", MB, MB_STEPS, mlp_minibatch(1000, 0.002, 1)),
    # seen: 1064,1985,2113,2264,2353,2425,2573,2803 (peak rise 3.34)
    _spike("mb-mlp-lr0.001-s2", MB, MB_STEPS, mlp_minibatch(1000, 0.001, 2)),
    # near-edge controls: 0.67× the edge, no spike on 4 seeds
    # seen: no onset (peak rise 1.30)
    _control("mb-mlp-lr0.0004-s0", MB, MB_STEPS, mlp_minibatch(1000, 0.0004, 0)),
    # seen: no onset (peak rise 1.43)
    _control("mb-mlp-lr0.0004-s1", MB, MB_STEPS, mlp_minibatch(1000, 0.0004, 1)),
    # the transformer's fixed pool (128 rows) in minibatches of 32, reshuffled every epoch;
    # ground truth: the loss on the whole pool. Edge over 3 seeds: 0.005 and 0.007 0/3, 0.01 1/3,
    # 0.02 and 0.03 3/3; the control sits at 0.7× the edge.
    # seen: 379,1001,1448 (peak rise 9.14)
    _spike("mb-tf-pool-lr0.03-s0", MB, TF_STEPS, transformer_pool(0.03, 0, batch=32)),
    # seen: 555,1241 (peak rise 3.81)
    _spike("mb-tf-pool-lr0.03-s1", MB, TF_STEPS, transformer_pool(0.03, 1, batch=32)),
    # seen: no onset (peak rise 1.17)
    _control("mb-tf-pool-lr0.007-s1", MB, TF_STEPS, transformer_pool(0.007, 1, batch=32)),
    # the transformer's reversal task streamed: a fresh batch of 32 sequences every step, no
    # pool to memorise; at the fixed pool's edge lr (0.01) the gradient noise keeps √v̂ up and
    # the held-out loss stays at its floor (no onset on seeds 0–2, peak rise ≤ 1.33; lr 0.03
    # spiked once on one of two seeds)
    # seen: no onset (peak rise 1.33)
    _control("tf-stream-lr0.01-s0", MB, TF_STEPS, transformer_stream(0.01, 0)),
    # seen: no onset (peak rise 1.31)
    _control("tf-stream-lr0.01-s1", MB, TF_STEPS, transformer_stream(0.01, 1)),
    # --- hparam-jump: the seed MLP (w1000, full batch) with a hyperparameter changed once.
    # Lowering Adam's β1 lowers its stability threshold 2(1+β1)/((1−β1)η) at once (0.9 → 0.5:
    # 6.3×), a 10× lr jump moves it 10×: the loss doubles a few steps after the change.
    # seen: 502 (peak rise 1766)
    _spike("mlp-beta1-down-0.9-0.5", HP, 900, mlp(1000, 0.003, 0, schedule=at(500, beta1=0.5))),
    # seen: 502 (peak rise 794)
    _spike("mlp-lr-jump-0.001-0.01", HP, 900, mlp(1000, 0.001, 0, schedule=at(500, lr=0.01))),
    # β1 0.97 → 0.90 lowers the threshold 3.5×; it spikes when the run is close enough to its
    # edge at the change (step 1000 at lr 0.005; at step 500 it did not, on seeds 0/1)
    # seen: 1005 (peak rise 585)
    _spike("adam-beta1-0.97-0.90-s3", HP, 1200,
           mlp(1000, 0.005, 3, beta1=0.97, schedule=at(1000, beta1=0.9))),
    # seen: 1005 (peak rise 107)
    _spike("adam-beta1-0.97-0.90-s4", HP, 1200,
           mlp(1000, 0.005, 4, beta1=0.97, schedule=at(1000, beta1=0.9))),
    # raising β1 raises the threshold and Adam's exp_avg is an average: no spike
    # seen: no onset (peak rise 1.15)
    _control("mlp-beta1-up-0.9-0.99", HP, 900, mlp(1000, 0.003, 0, schedule=at(500, beta1=0.99))),
    # ... not even with exp_avg multiplied by (1 − 0.90)/(1 − 0.97) = 3.3 at the change (the SGD
    # rescaling applied to Adam: a 3.3× larger update for a few steps): no spike in 3000 steps
    # on 3 seeds, peak rise ≤ 1.08. (At lr 0.003 the same held, but edge-of-stability bumps of
    # 1.7–1.8× near step 2800–2900 made it a fragile control.)
    # seen: no onset (peak rise 1.08)
    _control("adam-beta1-0.90-0.97-rescaled", HP, 3000,
             mlp(1000, 0.002, 0, schedule=at(500, beta1=0.97, rescale=True))),
    # SGD (lr 0.004 = 0.67× the lr 0.006 at which momentum-0.9 SGD diverges in its first steps,
    # the sweep sgd-m0.9) with momentum 0.90 → 0.97 and the buffer not rescaled: the heavy-ball
    # threshold 2(1+μ)/η rises and the summed buffer only grows towards its new scale over ~30
    # steps; no spike in 3000 steps on 3 seeds, peak rise ≤ 1.01 (lr 0.005 also held but rose
    # 1.88× in its first 60 steps). The agent treats SGD differently (no Adam signals): it must
    # just not page.
    # seen: no onset (peak rise 1.01)
    _control("sgd-momentum-0.90-0.97-unrescaled", HP, 3000,
             mlp_sgd(1000, 0.004, 0, momentum=0.9, schedule=at(500, momentum=0.97))),
    # the drop comes at 400, before the lr-0.01 run's first edge-of-stability crossing (~467)
    # seen: no onset (peak rise 1.12)
    _control("mlp-lr-drop-0.01-0.001", HP, 900, mlp(1000, 0.01, 0, schedule=at(400, lr=0.001))),
)
QUICK: tuple[str, ...] = ("quad-b2-0.99", "quad-b2-0.99-eps0.1")


def by_name(names: tuple[str, ...] | list[str]) -> list[Scenario]:
    """The scenarios with these names, in order: the suite's, else a held-out variant of one of
    its families named in the same grammar (`_variants`); KeyError naming an unknown one."""
    table = {s.name: s for s in SCENARIOS}
    found = {n: table.get(n) or variant(n) for n in names}
    unknown = [n for n, sc in found.items() if sc is None]
    if unknown:
        raise KeyError(f"unknown scenario(s) {unknown}; known: {sorted(table)}, or a variant "
                       "such as mlp-w1000-lr0.005-s5, cnn-lr0.02-s4, tf-L1-lr0.03-s3, "
                       "mb-mlp-lr0.002-s4, mb-tf-pool-lr0.03-s2, hp-mlp-lr0.001-s1-lr0.003, "
                       "hp-mlp-lr0.001-s0-b1-0.7")
    return [sc for n in names if (sc := found[n]) is not None]


@dataclass(frozen=True)
class EdgeSweep:
    """How a family's edge was found: train `make(lr, seed)` for `steps` over a grid."""

    family: str
    label: str
    steps: int
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    make: Callable[[float, int], Callable[[], Task]]


EDGES: dict[str, EdgeSweep] = {
    e.label: e
    for e in (
        EdgeSweep(MLP, "mlp-w1000", MLP_STEPS,
                  (0.001, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005), (0, 1, 2, 3, 4),
                  lambda lr, s: mlp(1000, lr, s)),
        EdgeSweep(MLP, "mlp-w500", MLP_STEPS, (0.002, 0.003, 0.004, 0.005, 0.006),
                  (0, 1, 2, 3, 4), lambda lr, s: mlp(500, lr, s)),
        EdgeSweep(MLP, "mlp-deep3x64", MLP_STEPS, (0.0001, 0.0002, 0.0003, 0.001), (0, 1, 2),
                  lambda lr, s: mlp_deep(64, 3, lr, s)),
        EdgeSweep(CNN, "cnn", CNN_STEPS, (0.003, 0.005, 0.006, 0.007, 0.01, 0.015, 0.02),
                  (0, 1, 2, 3),
                  lambda lr, s: cnn(lr, s)),
        EdgeSweep(TF, "tf-L1", TF_STEPS, (0.003, 0.005, 0.007, 0.01, 0.02, 0.03), (0, 1, 2, 3),
                  lambda lr, s: transformer_pool(lr, s)),
        EdgeSweep(MB, "mb-mlp", MB_STEPS, (0.0003, 0.0004, 0.0005, 0.0006, 0.0008, 0.001),
                  (0, 1, 2, 3), lambda lr, s: mlp_minibatch(1000, lr, s)),
        EdgeSweep(MB, "mb-tf-pool", TF_STEPS, (0.005, 0.007, 0.01, 0.02, 0.03), (0, 1, 2),
                  lambda lr, s: transformer_pool(lr, s, batch=32)),
        EdgeSweep(HP, "sgd-m0.9", 1000, (0.003, 0.004, 0.005, 0.006, 0.007), (0, 1, 2),
                  lambda lr, s: mlp_sgd(1000, lr, s, momentum=0.9)),
        # threshold-lowering jumps at step 1000 of a run at `lr`: which spike (the agent's
        # gradient-direction ratio is far below 1 before them; docs/early-warning.md)
        EdgeSweep(HP, "adam-b1-0.97-0.90", 1100, (0.0005, 0.001, 0.002, 0.005), (3, 4, 5),
                  lambda lr, s: mlp(1000, lr, s, beta1=0.97, schedule=at(1000, beta1=0.9))),
        EdgeSweep(HP, "adam-lr-x1.5", 1100, (0.0003, 0.0005, 0.001, 0.002), (0, 1, 2),
                  lambda lr, s: mlp(1000, lr, s, schedule=at(1000, lr=1.5 * lr))),
    )
}  # fmt: skip
