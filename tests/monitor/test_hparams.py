"""Hyper-parameter jump detection, rescaled vs unrescaled momentum buffers, thresholds."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from spikewatch.monitor.adam_state import UnsupportedOptimizer, c_t
from spikewatch.monitor.hparams import HparamEvent, HparamWatch, stability_threshold
from spikewatch.protocol.names import EventType


def _train(
    opt: torch.optim.Optimizer,
    model: nn.Module,
    watch: HparamWatch,
    steps: int,
    between: Callable[[int], None] | None = None,
    last_ratio: float | None = None,
    restamp: bool = False,
) -> list[HparamEvent]:
    """Run `steps` steps with the watch hooked in; `between(i)` edits the optimizer after step i.
    `restamp`: the agent's cheap paths after the first step (`restamp` after each step; before
    it, `lr_moved_smoothly` first: `between` changes nothing but the lr)."""
    events: list[HparamEvent] = []
    g = torch.Generator().manual_seed(0)
    for i in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 4, generator=g)).square().mean().backward()
        lrs = [float(grp["lr"]) for grp in opt.param_groups]
        if not (restamp and i > 1 and watch.lr_moved_smoothly(lrs)):
            events += watch.before_step(opt, i + 1, last_ratio)
        opt.step()
        if restamp and i > 0:
            watch.restamp(opt)
        else:
            watch.after_step(opt)
        if between is not None:
            between(i + 1)
    return events


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _set_beta1(opt: torch.optim.Optimizer, beta1: float) -> None:
    for grp in opt.param_groups:
        grp["betas"] = (beta1, grp["betas"][1])


def _scale_buffers(opt: torch.optim.Optimizer, key: str, factor: float) -> None:
    for state in opt.state.values():
        state[key].mul_(factor)


def _jumps(events: list[HparamEvent]) -> list[HparamEvent]:
    return [e for e in events if e.type == EventType.MOMENTUM_JUMP]


@pytest.mark.parametrize("rescale", [False, True], ids=["unrescaled", "rescaled"])
def test_adam_beta1_jump(rescale: bool) -> None:
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.9, 0.999))
    watch = HparamWatch()

    def between(step: int) -> None:
        if step == 20:
            _set_beta1(opt, 0.97)
            if rescale:
                _scale_buffers(opt, "exp_avg", 0.1 / 0.03)

    events = _train(opt, m, watch, 25, between)
    jumps = _jumps(events)
    assert len(jumps) == 1
    j = jumps[0]
    assert j.step == 21
    assert j.data["hparam"] == "beta1"
    assert j.data["old"] == pytest.approx(0.9)
    assert j.data["new"] == pytest.approx(0.97)
    assert j.data["note_factor"] == pytest.approx(0.1 / 0.03)
    assert j.data["advised_factor"] == 1.0  # Adam's exp_avg is an average: no rescale needed
    assert j.data["buffer_ratio"] == pytest.approx(0.1 / 0.03 if rescale else 1.0, rel=1e-5)
    assert j.data["rescaled"] is rescale
    assert j.data["needs_rescale"] is rescale  # rescaling Adam's buffer would triple the step
    changes = [e for e in events if e.type == EventType.HPARAM_CHANGE]
    assert [(e.step, e.data["hparam"]) for e in changes] == [(21, "beta1")]
    # raising β1 raises Adam's threshold 2/(η·c_t): r shrinks by c_t(new)/c_t(old)
    t = 21
    assert j.data["threshold_before"] == pytest.approx(2 / (1e-3 * c_t(0.9, t)))
    assert j.data["threshold_after"] == pytest.approx(2 / (1e-3 * c_t(0.97, t)))
    assert j.data["ratio_factor"] == pytest.approx(c_t(0.97, t) / c_t(0.9, t))


@pytest.mark.parametrize("rescale", [False, True], ids=["unrescaled", "rescaled"])
def test_adam_jump_from_version_counters_launches_no_kernel(rescale: bool) -> None:
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.9, 0.999))
    watch = HparamWatch(adam_buffer_norms=False)

    def between(step: int) -> None:
        if step == 20:
            _set_beta1(opt, 0.97)
            if rescale:
                _scale_buffers(opt, "exp_avg", 0.1 / 0.03)

    (j,) = _jumps(_train(opt, m, watch, 25, between))
    assert j.data["buffer_ratio"] == (None if rescale else 1.0)
    assert j.data["rescaled"] is rescale
    assert j.data["needs_rescale"] is rescale
    for norms, kernels in ((False, 0), (True, 1)):
        with torch.profiler.profile() as prof:
            HparamWatch(adam_buffer_norms=norms, sample_tensors=1).after_step(opt)
        assert sum(e.name == "aten::linalg_vector_norm" for e in prof.events()) == kernels


@pytest.mark.parametrize("touch", ["untouched", "rescaled", "reloaded"])
def test_restamp_between_jumps_keeps_the_buffer_check_exact(touch: str) -> None:
    """The cheap path (`restamp` on steps that changed no hyperparameter) sees the same as
    `after_step`: untouched buffers give ratio 1; rescaled or reloaded ones read as touched."""
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.9, 0.999))
    watch = HparamWatch(adam_buffer_norms=False, sample_tensors=1)
    g = torch.Generator().manual_seed(0)
    events: list[HparamEvent] = []
    for i in range(12):
        if i == 10:
            _set_beta1(opt, 0.97)
            if touch == "rescaled":
                _scale_buffers(opt, "exp_avg", 0.1 / 0.03)
            elif touch == "reloaded":  # new tensors with the same values
                opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        opt.zero_grad()
        m(torch.randn(8, 4, generator=g)).square().mean().backward()
        events += watch.before_step(opt, i + 1)
        opt.step()
        if i in (0, 10):
            watch.after_step(opt)
        else:
            watch.restamp(opt)
    (j,) = _jumps(events)
    assert j.step == 11
    assert j.data["buffer_ratio"] == (1.0 if touch == "untouched" else None)
    assert j.data["rescaled"] is (touch != "untouched")


def test_lowering_beta1_lowers_the_threshold_and_raises_r() -> None:
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.97, 0.999))

    def between(step: int) -> None:
        if step == 10:
            _set_beta1(opt, 0.9)

    (j,) = _jumps(_train(opt, m, HparamWatch(), 12, between, last_ratio=0.5))
    before, after = j.data["threshold_before"], j.data["threshold_after"]
    assert isinstance(before, float)
    assert isinstance(after, float)
    assert after < before
    assert j.data["ratio_factor"] == pytest.approx(before / after)
    assert j.data["stability_ratio_before"] == 0.5
    assert j.data["stability_ratio_after"] == pytest.approx(0.5 * before / after)


@pytest.mark.parametrize("rescale", [False, True], ids=["unrescaled", "rescaled"])
def test_sgd_momentum_jump(rescale: bool) -> None:
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.9)

    def between(step: int) -> None:
        if step == 5:
            opt.param_groups[0]["momentum"] = 0.97
            if rescale:
                _scale_buffers(opt, "momentum_buffer", 0.1 / 0.03)

    (j,) = _jumps(_train(opt, m, HparamWatch(), 7, between))
    assert j.data["advised_factor"] == pytest.approx(0.1 / 0.03)
    assert j.data["rescaled"] is rescale
    assert j.data["needs_rescale"] is (not rescale)
    assert j.data["threshold_before"] == pytest.approx(2 * 1.9 / 1e-2)
    assert j.data["threshold_after"] == pytest.approx(2 * 1.97 / 1e-2)


@pytest.mark.parametrize("restamp", [False, True], ids=["after_step", "restamp"])
def test_smooth_schedules_are_silent_step_drop_is_reported(restamp: bool) -> None:
    """The same events whether each step is read in full or by the agent's cheap paths
    (`restamp` re-reads the numbers; `lr_moved_smoothly` stands for `before_step` where only the
    lr moved, by less than the tolerance): a schedule moves the lr at every step."""
    m = _model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=10)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[10])
    events = _train(opt, m, HparamWatch(rel_tol=0.05, adam_buffer_norms=False, sample_tensors=1),
                    25, lambda _s: sched.step(), restamp=restamp)  # version stamps: restampable
    lr_events = [e for e in events if e.data.get("hparam") == "lr"]
    # only the start of the warm-up ramp (no trend yet) is reported; the corner is smooth
    assert [e.step for e in lr_events] == [2]
    m2 = _model()
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-3)
    steplr = torch.optim.lr_scheduler.StepLR(opt2, step_size=10, gamma=0.1)
    ev2 = _train(opt2, m2, HparamWatch(adam_buffer_norms=False, sample_tensors=1), 25,
                 lambda _s: steplr.step(), restamp=restamp)
    drops = [e for e in ev2 if e.data.get("hparam") == "lr"]
    assert [e.step for e in drops] == [11, 21]
    for drop, before in zip(drops, (1e-3, 1e-4), strict=True):  # each from the lr it replaced
        assert drop.data["old"] == pytest.approx(before)
        assert drop.data["new"] == pytest.approx(0.1 * before)
        assert drop.data["ratio_factor"] == pytest.approx(0.1)


def test_eps_weight_decay_beta2_changes_per_group() -> None:
    m = _model()
    opt = torch.optim.AdamW(
        [{"params": list(m[0].parameters())}, {"params": list(m[2].parameters())}], lr=1e-3
    )

    def between(step: int) -> None:
        if step == 3:
            opt.param_groups[1]["eps"] = 1e-6
            opt.param_groups[1]["weight_decay"] = 0.0
            opt.param_groups[0]["betas"] = (0.9, 0.95)

    events = _train(opt, m, HparamWatch(), 5, between)
    got = sorted((e.data["group"], e.data["hparam"]) for e in events if e.step == 4)
    assert got == [(0, "beta2"), (1, "eps"), (1, "weight_decay")]
    assert not _jumps(events)
    assert all(e.data["ratio_factor"] == pytest.approx(1.0) for e in events)


def test_threshold_formula_and_refusal() -> None:
    assert stability_threshold("adam", 0.01, 0.9) == pytest.approx(2 * 1.9 / (0.1 * 0.01))
    assert stability_threshold("adam", 0.01, 0.9, step=10_000) == pytest.approx(3800.0)
    assert stability_threshold("adam", 0.01, 0.9, step=1) == pytest.approx(3800.0 * 0.1)
    assert stability_threshold("sgd", 0.1, 0.9, nesterov=True) is None
    assert stability_threshold("sgd", 0.0, 0.9) is None
    m = _model()
    with pytest.raises(UnsupportedOptimizer):
        HparamWatch().after_step(torch.optim.RMSprop(m.parameters()))
    assert HparamWatch().before_step(torch.optim.Adam(m.parameters()), 1) == []
