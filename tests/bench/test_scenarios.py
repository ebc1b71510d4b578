"""The scenario suite's shape: every scenario builds, trains and is deterministic; the families
are complete; minibatch scenarios carry their ground truth. Never a step number (the trajectories
are chaotic and differ between CPUs)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torch")

import torch

from benchmarks.early_warning._train import Arm, first_mismatch
from benchmarks.early_warning.scenarios import (
    EDGES,
    FAMILIES,
    QUICK,
    SCENARIOS,
    Scenario,
    Task,
    by_name,
)
from benchmarks.early_warning.scenarios._base import at
from benchmarks.early_warning.scenarios._mlp import mlp, mlp_sgd
from benchmarks.early_warning.scenarios._variants import HP_CHANGE, variant
from benchmarks.early_warning.survey import RHO_FROM, peak_rise, survey
from spikewatch.protocol.wire import METRIC_RE, RUN_RE


def test_names_are_unique_and_valid_run_names() -> None:
    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names))
    for n in names:
        assert RUN_RE.match(f"{n}.closure-exact-full-inf"), n
    assert METRIC_RE.match("eval_loss")


def test_every_family_has_a_spiking_scenario_and_a_control() -> None:
    assert {s.family for s in SCENARIOS} == set(FAMILIES)
    for fam in FAMILIES:
        mine = [s for s in SCENARIOS if s.family == fam]
        assert any(s.control for s in mine), f"{fam}: no control"
        assert any(not s.control for s in mine), f"{fam}: no spiking scenario"


def test_the_suite_is_broad() -> None:
    mlp_ = [s for s in SCENARIOS if s.family == "regression-mlp"]
    assert len({s.name.split("-s")[-1] for s in mlp_}) >= 3  # seeds
    assert len({s.name.split("-")[1] for s in mlp_}) >= 2  # widths
    # each spiking CNN/transformer setting ships on >= 2 seeds, or with a sibling lr
    for fam in ("cnn", "transformer"):
        assert sum(not s.control for s in SCENARIOS if s.family == fam) >= 2
    assert any(s.minibatch and s.control and s.name.startswith("tf-stream") for s in SCENARIOS)


def test_steps_fit_the_api_and_quick_exists() -> None:
    assert all(0 < s.steps <= 10_000 for s in SCENARIOS)
    assert by_name(list(QUICK))
    with pytest.raises(KeyError, match="unknown"):
        by_name(["no-such-scenario"])


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
def test_every_scenario_builds_and_takes_steps_deterministically(sc: Scenario) -> None:
    state = torch.random.get_rng_state()
    a, b = Arm(sc.build()), Arm(sc.build())
    assert torch.equal(state, torch.random.get_rng_state())  # builds leave the global RNG alone
    assert isinstance(a.task, Task)
    a.run(3)
    b.run(3)
    loss, ev = a.series()
    assert len(loss) == 3
    assert all(math.isfinite(x) for x in loss)
    assert first_mismatch(a.losses, b.losses) is None
    assert first_mismatch(a.evals, b.evals) is None
    # minibatch scenarios are scored on eval_loss (full data / held out); the others on the loss
    assert sc.minibatch == (a.task.eval_loss is not None)
    if sc.minibatch:
        assert sc.family == "minibatch"
        assert a.task.batch is not None
        assert ev is not None
        assert len(ev) == 3
        assert ev != loss


@pytest.mark.parametrize("name", ["mlp-w1000-lr0.01-s0", "cnn-lr0.02-s0", "tf-L2-lr0.03-s0",
                                  "mb-mlp-lr0.002-s0", "mb-tf-pool-lr0.03-s0"])
def test_a_variant_named_like_a_suite_scenario_trains_the_same(name: str) -> None:
    """The held-out grammar builds what the suite's registry builds for the suite's own names,
    so a variant (another seed or lr) is the same problem."""
    suite = next(s for s in SCENARIOS if s.name == name)
    held_out = variant(name)
    assert held_out is not None
    assert (held_out.family, held_out.steps, held_out.minibatch) == (
        suite.family, suite.steps, suite.minibatch)
    a, b = Arm(suite.build()), Arm(held_out.build())
    a.run(3)
    b.run(3)
    assert first_mismatch(a.losses, b.losses) is None
    assert first_mismatch(a.evals, b.evals) is None


@pytest.mark.parametrize(("suite_name", "name"), [
    ("mlp-lr-jump-0.001-0.01", "hp-mlp-lr0.001-s0-lr0.01"),
    ("mlp-beta1-down-0.9-0.5", "hp-mlp-lr0.003-s0-b1-0.5")])
def test_a_jump_variant_changes_the_hyperparameter_like_the_suite(suite_name: str,
                                                                  name: str) -> None:
    """The held-out jumps change lr or β1 at the step the suite's own jumps do, to the value
    named, and train as the suite's run with the same values does."""
    suite = next(s for s in SCENARIOS if s.name == suite_name)
    held_out = variant(name)
    assert held_out is not None
    assert (held_out.family, held_out.steps) == (suite.family, suite.steps)
    a, b = Arm(suite.build()), Arm(held_out.build())
    a.run(HP_CHANGE + 3)
    b.run(HP_CHANGE + 3)
    assert first_mismatch(a.losses, b.losses) is None
    assert a.task.optimizer.param_groups[0]["lr"] == b.task.optimizer.param_groups[0]["lr"]
    assert a.task.optimizer.param_groups[0]["betas"] == b.task.optimizer.param_groups[0]["betas"]


def test_held_out_variants_by_name() -> None:
    got = by_name(["mlp-w500-lr0.004-s7", "tf-L1-lr0.025-s5", "mb-mlp-lr1e-3-s9"])
    assert [(s.family, s.control, s.minibatch) for s in got] == [
        ("regression-mlp", False, False), ("transformer", False, False),
        ("minibatch", False, True)]
    assert variant("mlp-w1000-lr0.01") is None  # no seed
    with pytest.raises(KeyError, match="or a variant such as"):
        by_name(["mlp-x-lr0.01-s0"])


def test_the_lstm_variant_trains_the_transformers_task_with_a_recurrent_network() -> None:
    """`lstm-lr{lr}-s{seed}` is the transformers' fixed-pool reversal task (the same data and the
    same loss floor) with an LSTM: an architecture the rules were not tuned on."""
    (sc,) = by_name(["lstm-lr0.2-s1"])
    assert (sc.family, sc.control, sc.minibatch, sc.steps) == ("lstm", False, False, 1500)
    a, b = Arm(sc.build()), Arm(sc.build())
    assert any(isinstance(m, torch.nn.LSTM) for m in a.task.model.modules())
    assert a.task.optimizer.param_groups[0]["lr"] == 0.2
    a.run(3)
    b.run(3)
    assert first_mismatch(a.losses, b.losses) is None
    tf = Arm(by_name(["tf-L1-lr0.2-s1"])[0].build())
    tf.run(1)
    # the same task: at initialisation both predict near-uniformly over the same vocabulary
    assert abs(a.losses[0] - tf.losses[0]) < 0.3 * tf.losses[0]


def test_a_minibatch_scenario_changes_batches_but_not_its_ground_truth_data() -> None:
    (sc,) = [s for s in SCENARIOS if s.minibatch and not s.control][:1]
    task = sc.build()
    assert task.batch is not None
    assert task.eval_loss is not None
    seen = []
    for t in range(3):
        task.batch(t)
        seen.append(float(task.closure().detach()))
    assert len(set(seen)) == 3  # different batches, same parameters
    assert float(task.eval_loss().detach()) == float(task.eval_loss().detach())


def test_schedule_rescales_adam_and_sgd_buffers() -> None:
    for build, key, hp in ((mlp(50, 0.001, 0), "exp_avg", "betas"),
                           (mlp_sgd(50, 0.001, 0, momentum=0.9), "momentum_buffer", "momentum")):
        task = build()
        task.optimizer.zero_grad()
        task.closure().backward()  # type: ignore[no-untyped-call]
        task.optimizer.step()
        p = next(iter(task.model.parameters()))
        before = task.optimizer.state[p][key].clone()
        kw = {"beta1": 0.97} if hp == "betas" else {"momentum": 0.97}
        at(1, rescale=True, **kw)(1, task.optimizer)
        after = task.optimizer.state[p][key]
        assert torch.allclose(after, before * (0.1 / 0.03))
        new = task.optimizer.param_groups[0][hp]
        assert (new[0] if hp == "betas" else new) == 0.97
        at(5, lr=0.5)(4, task.optimizer)  # another step: nothing changes
        assert task.optimizer.param_groups[0]["lr"] == 0.001


def test_edge_sweeps_cover_the_families_with_controls_near_an_edge() -> None:
    assert {e.family for e in EDGES.values()} >= {"regression-mlp", "cnn", "transformer",
                                                    "minibatch"}  # fmt: skip
    for e in EDGES.values():
        assert len(e.seeds) >= 3
        assert list(e.lrs) == sorted(e.lrs)


def test_peak_rise_and_survey_verdicts() -> None:
    assert peak_rise([1.0] * 60) == pytest.approx(1.0)
    assert peak_rise([1.0] * 55 + [2.5] + [1.0] * 4) == pytest.approx(2.5)
    assert math.isinf(peak_rise([1.0] * 55 + [math.nan]))
    (sc,) = by_name([QUICK[1]])
    r = survey(sc.name, sc.family, sc.control, 120, sc.build)
    assert r.steps == 120
    assert r.truth == "loss"
    assert r.cpu_s >= 0
    assert r.verdict == ("ok" if not r.onsets else "CONTROL SPIKED")
    assert math.isnan(r.peak_rho)  # not past the warm-up yet
    past = survey(sc.name, sc.family, sc.control, RHO_FROM + 20, sc.build)
    assert 0.0 < past.peak_rho < 1e3  # Adam's ‖g‖/‖√v̂‖, what the guard's catch-up reads
