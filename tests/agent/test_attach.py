"""attach(): hooks, probes and drains of the real agent, delivered by the real transport to a real
ZeroMQ test peer on 127.0.0.1."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import zmq
from torch import nn

from spikewatch import agent
from spikewatch.agent._config import resolve
from spikewatch.agent._monitor import Monitor
from spikewatch.agent._profiles import PROFILES
from spikewatch.protocol import names as nm
from spikewatch.protocol.names import EventType
from tests.agent import _delivered as dl
from tests.agent._loop import train_on
from tests.agent._peer import Peer, free_endpoint


def _mlp(seed: int = 0) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 3))
    x = torch.randn(48, 6)
    y = torch.randint(0, 3, (48,))
    return model, x, y


def _grad_norm(model: nn.Module) -> float:
    return float(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]
                           ).norm())


def _square_mean(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A loss for models without targets: the mean square of `model(x)`."""
    return lambda: model(x).square().mean()


def _train(monitor: Monitor, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
           y: torch.Tensor, steps: int, before: Callable[[int], None] | None = None) -> None:
    """`train_on` with the cross-entropy of `model(x)` against `y`."""
    train_on(monitor, opt, lambda: nn.functional.cross_entropy(model(x), y), steps, before)


def test_signals_are_delivered_with_exact_values(peer: Peer) -> None:
    model, x, y = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)

    def closure() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y)

    monitor = agent.attach(model, opt, run="unit-delivery", endpoint=peer.endpoint,
                           closure=closure, profile="full", overhead_budget=math.inf,
                           logits_module=model[2])
    losses, gnorms = [], []
    for _ in range(12):
        opt.zero_grad()
        loss = closure()
        torch.autograd.backward(loss)
        gnorms.append(_grad_norm(model))
        opt.step()
        monitor.log(loss=loss, tokens=float(len(x)))
        losses.append(loss.item())
        assert monitor.ctx._hvp is None  # the HVP graph does not outlive the pre-step hook
    dl.closed_and_delivered(peer, monitor)

    hello = dl.hello(peer)
    assert hello.header.run == "unit-delivery"
    meta = hello.meta
    assert meta["model_parameters"] == sum(p.numel() for p in model.parameters())
    assert meta["optimizer"] == "Adam"
    assert meta["lr"] == 0.02
    assert meta["beta2"] == 0.999
    assert meta["resumed_at_step"] == 0
    assert meta["world_size"] == 1
    assert meta["rank"] == 0
    assert meta["profile"] == "full"
    assert meta["curvature"] == "exact"
    assert meta["torch_version"] == torch.__version__

    loss_by_step = dl.by_step(peer, nm.LOSS)
    assert sorted(loss_by_step) == list(range(12))
    assert [loss_by_step[s] for s in range(12)] == pytest.approx(losses, rel=1e-6)
    assert [dl.by_step(peer, nm.GRAD_NORM)[s] for s in range(12)] == pytest.approx(gnorms, rel=1e-5)
    assert dl.by_step(peer, "tokens")[3] == 48.0
    # one record per step: loss logged after step() joins the probes' record of that step
    steps = [r.step for r in dl.records(peer) if nm.LOSS in r.scalars]
    assert steps == sorted(set(steps))
    for metric in (nm.RHO, nm.SQRT_V_NORM, nm.LAMBDA_GRAD, nm.STABILITY_RATIO, nm.LAMBDA_MAX,
                   nm.STABILITY_RATIO_MAX, nm.GRAD_TOP_EIG_COS, nm.LR, nm.BETA1, nm.MAX_PROB,
                   nm.ENTROPY, nm.GRAD_SPIKE_SHARE, nm.SA_SIGN_DIVERSITY):
        assert 0 in dl.by_step(peer, metric), metric
    assert all(math.isfinite(v) for v in dl.by_step(peer, nm.STABILITY_RATIO).values())
    # the two-secant and its plain secant: of gradient i once gradient i + 1 is known, from the
    # fourth step on
    assert sorted(dl.by_step(peer, nm.STABILITY_RATIO_TWO_SECANT)) == list(range(2, 11))
    assert sorted(dl.by_step(peer, nm.STABILITY_RATIO_SECANT)) == list(range(2, 11))
    # stability ratio = η·λ_grad/2 for Adam without weight decay
    r0, l0 = dl.by_step(peer, nm.STABILITY_RATIO)[0], dl.by_step(peer, nm.LAMBDA_GRAD)[0]
    assert r0 == pytest.approx(0.02 * l0 / 2, rel=1e-5)
    first = next(r for r in dl.records(peer) if r.step == 0)
    assert set(first.layers[nm.SA_MEAN]) == {"0", "2"}
    assert sum(first.hists[nm.SA_HIST]["0"].counts) == 48
    assert "group:0" in first.layers[nm.RHO]
    # self-report: overhead, step time, cadence per probe, transport counters
    agent_recs = [r for r in dl.records(peer) if nm.AGENT_OVERHEAD in r.scalars]
    assert agent_recs
    cadence = agent_recs[-1].layers[nm.AGENT_CADENCE]
    assert set(cadence) == set(PROFILES["full"].cadences)
    assert cadence["loss"] == 1.0
    assert cadence["curvature"] >= 1.0
    assert agent_recs[-1].scalars[nm.AGENT_STEP_TIME] > 0
    assert nm.AGENT_SENT in agent_recs[-1].scalars
    assert nm.AGENT_DROPPED in agent_recs[-1].scalars


def test_bare_module_and_odd_names_are_valid_on_the_wire(peer: Peer) -> None:
    torch.manual_seed(10)
    model = nn.ModuleDict({"odd name": nn.Linear(4, 4)})
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor = agent.attach(model, opt, run="unit-names", endpoint=peer.endpoint, profile="full",
                           overhead_budget=math.inf, layers=[model["odd name"]])
    bare = nn.Linear(4, 2)
    opt2 = torch.optim.Adam(bare.parameters(), lr=0.01)
    monitor2 = agent.attach(bare, opt2, run="unit-bare", endpoint=peer.endpoint, profile="full",
                            overhead_budget=math.inf)
    x = torch.randn(8, 4)
    for _ in range(3):
        for m, o, mon in ((model["odd name"], opt, monitor), (bare, opt2, monitor2)):
            train_on(mon, o, _square_mean(m, x), 1)
    dl.closed_and_delivered(peer, monitor)
    dl.closed_and_delivered(peer, monitor2)
    layers = {lay for r in dl.records(peer) for lay in r.layers.get(nm.SA_MEAN, {})}
    assert layers == {"odd_name", "model"}
    rho = {lay for r in dl.records(peer) for lay in r.layers.get(nm.RHO, {})}
    assert {"odd_name.weight", "weight", "bias"} <= rho


def test_alignment_skips_attention_out_proj_whose_forward_never_runs(peer: Peer) -> None:
    torch.manual_seed(11)
    model = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match=r"out_proj of an nn\.MultiheadAttention"):
        agent.attach(model, opt, layers=["self_attn.out_proj"])
    monitor = agent.attach(model, opt, run="unit-mha", endpoint=peer.endpoint, profile="full",
                           overhead_budget=math.inf)
    x = torch.randn(4, 5, 8)
    train_on(monitor, opt, _square_mean(model, x), 2)
    dl.closed_and_delivered(peer, monitor)
    first = next(r for r in dl.records(peer) if nm.SA_MEAN in r.layers)
    assert set(first.layers[nm.SA_MEAN]) == {"linear1", "linear2"}  # every hooked layer reports


def test_nonfinite_loss_raises_an_event_and_training_continues(peer: Peer) -> None:
    model, x, y = _mlp(1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor = agent.attach(model, opt, run="unit-nan", endpoint=peer.endpoint, profile="full",
                           overhead_budget=math.inf)
    done = 0
    for step in range(15):
        opt.zero_grad()
        xb = x.clone()
        if step == 6:
            xb[0, 0] = float("nan")  # a poisoned batch: NaN loss, NaN gradients
        loss = nn.functional.cross_entropy(model(xb), y)
        torch.autograd.backward(loss)
        opt.step()
        monitor.log(loss=loss)
        done += 1
    dl.closed_and_delivered(peer, monitor)
    assert done == 15
    nonfinite = dl.events(peer, EventType.NONFINITE.value)
    assert (6, "loss") in {(s, e.data["series"]) for s, e in nonfinite}
    assert (6, "grad_norm") in {(s, e.data["series"]) for s, e in nonfinite}
    assert all(s >= 6 for s, _ in nonfinite)
    assert math.isnan(dl.by_step(peer, nm.LOSS)[6])  # carried explicitly, not dropped
    assert sorted(dl.by_step(peer, nm.LOSS)) == list(range(15))


def test_no_server_training_continues_and_close_is_bounded(tmp_path: Path) -> None:
    model, x, y = _mlp(2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor = agent.attach(model, opt, run="unit-offline", endpoint=free_endpoint(),
                           spool_dir=tmp_path, profile="default")
    _train(monitor, model, opt, x, y, 60)
    t0 = time.monotonic()
    monitor.close(timeout=1.0)
    elapsed = time.monotonic() - t0
    assert elapsed < 5.0
    c = monitor.counters()
    assert c.acked == 0
    assert c.submitted >= 3
    assert c.spooled + c.queued + c.dropped >= 1  # kept for replay, never blocking training


def test_failing_probes_are_isolated(peer: Peer) -> None:
    torch.manual_seed(3)
    emb = nn.Embedding(10, 8)
    head = nn.Linear(8, 5)
    model = nn.Sequential(emb, nn.ReLU(), head)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    tokens = torch.randint(0, 10, (32,))
    target = torch.randint(0, 5, (32,))
    calls = {"n": 0}

    def bad_closure() -> torch.Tensor:
        calls["n"] += 1
        raise RuntimeError("closure exploded")

    # The Embedding has a 2-D weight but is not linear in its input: its SA probe must fail.
    monitor = agent.attach(model, opt, run="unit-probe-error", endpoint=peer.endpoint,
                           closure=bad_closure, layers=[emb, "2"], profile="full",
                           overhead_budget=math.inf)
    _train(monitor, model, opt, tokens, target, 8)
    dl.closed_and_delivered(peer, monitor)
    errors = {e.data["probe"]: (s, e) for s, e in dl.events(peer, EventType.PROBE_ERROR.value)}
    assert set(errors) >= {"alignment", "curvature"}
    assert errors["curvature"][1].data["error"] == "RuntimeError"
    assert "closure exploded" in str(errors["curvature"][1].data["message"])
    assert calls["n"] == 1  # disabled after the first failure
    assert len(dl.events(peer, EventType.PROBE_ERROR.value)) == len(errors)  # reported once
    assert sorted(dl.by_step(peer, nm.LOSS)) == list(range(8))
    assert sorted(dl.by_step(peer, nm.GRAD_NORM)) == list(range(8))  # others keep running
    assert not any(nm.SA_MEAN in r.layers for r in dl.records(peer) if r.step > 0)


def test_environment_configures_attach(peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIKEWATCH_ENDPOINT", peer.endpoint)
    monkeypatch.setenv("SPIKEWATCH_RUN", "from-env")
    monkeypatch.setenv("SPIKEWATCH_PROFILE", "light")
    monkeypatch.setenv("SPIKEWATCH_OVERHEAD_BUDGET", "0.5")
    model, x, y = _mlp(4)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with agent.attach(model, opt) as monitor:
        for _ in range(3):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            torch.autograd.backward(loss)
            opt.step()
            monitor.log(loss=loss.item())
    assert peer.wait_for(lambda: len(dl.by_step(peer, nm.LOSS)) == 3)
    hello = dl.hello(peer)
    assert hello.header.run == "from-env"
    assert hello.meta["profile"] == "light"
    assert hello.meta["overhead_budget"] == 0.5
    assert hello.meta["curvature"] == "secant"  # no closure: the zero-extra-pass estimator


def test_bad_configuration_fails_at_attach(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _, _ = _mlp()
    opt = torch.optim.Adam(model.parameters())
    monkeypatch.setenv("SPIKEWATCH_PROFILE", "turbo")
    with pytest.raises(ValueError, match="SPIKEWATCH_PROFILE 'turbo'"):
        agent.attach(model, opt)
    monkeypatch.delenv("SPIKEWATCH_PROFILE")
    with pytest.raises(ValueError, match="needs closure="):
        agent.attach(model, opt, curvature="exact")
    with pytest.raises(ValueError, match="no module named 'missing'"):
        agent.attach(model, opt, layers=["missing"])
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        agent.attach(model, "adam")  # type: ignore[arg-type]


def test_disabled_agent_sends_nothing_and_adds_no_hooks(peer: Peer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIKEWATCH_DISABLED", "1")
    model, x, y = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor = agent.attach(model, opt, endpoint=peer.endpoint)
    assert not monitor.enabled
    assert not opt._optimizer_step_pre_hooks
    assert not opt._optimizer_step_post_hooks
    loss = nn.functional.cross_entropy(model(x), y)
    torch.autograd.backward(loss)
    opt.step()
    monitor.log(loss=loss)
    monitor.close()
    time.sleep(0.2)
    assert peer.messages() == []


def test_step_with_closure_measures_after_the_closure_ran(peer: Peer) -> None:
    model, x, y = _mlp(5)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor = agent.attach(model, opt, run="unit-closure-step", endpoint=peer.endpoint,
                           profile="full", overhead_budget=math.inf)
    gnorms = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        torch.autograd.backward(loss)
        gnorms.append(_grad_norm(model))
        return loss

    for _ in range(5):
        loss = opt.step(closure)
        assert isinstance(loss, torch.Tensor)
        monitor.log(loss=loss)
    dl.closed_and_delivered(peer, monitor)
    got = dl.by_step(peer, nm.GRAD_NORM)
    assert [got[s] for s in range(5)] == pytest.approx(gnorms, rel=1e-5)


def test_resumed_optimizer_continues_the_step_count(peer: Peer) -> None:
    model, x, y = _mlp(6)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(7):  # training before the agent is attached (as after loading a checkpoint)
        opt.zero_grad()
        torch.autograd.backward(nn.functional.cross_entropy(model(x), y))
        opt.step()
    monitor = agent.attach(model, opt, run="unit-resume", endpoint=peer.endpoint)
    _train(monitor, model, opt, x, y, 3)
    dl.closed_and_delivered(peer, monitor)
    assert dl.hello(peer).meta["resumed_at_step"] == 7
    assert [(s, e.data["resumed_at_step"]) for s, e in dl.events(peer, EventType.RESUMED.value)
            ] == [(7, 7)]
    assert sorted(dl.by_step(peer, nm.LOSS)) == [7, 8, 9]


def test_logits_passed_to_log(peer: Peer) -> None:
    model, x, y = _mlp(7)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    monitor = agent.attach(model, opt, run="unit-logits", endpoint=peer.endpoint,
                           profile="full", overhead_budget=math.inf)
    for _ in range(3):
        opt.zero_grad()
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        torch.autograd.backward(loss)
        opt.step()
        monitor.log(loss=loss, logits=logits)
    dl.closed_and_delivered(peer, monitor)
    p = torch.softmax(model(x).detach(), dim=-1)
    assert 0 < dl.by_step(peer, nm.MAX_PROB)[2] <= 1
    assert dl.by_step(peer, nm.MAX_PROB)[2] == pytest.approx(p.max(-1).values.mean().item(),
                                                           rel=0.2)
    # SGD: Adam-state probes are off, reported once, the rest works
    errors = dl.events(peer, EventType.PROBE_ERROR.value)
    assert [e.data["error"] for _, e in errors] == ["UnsupportedOptimizer"]
    assert sorted(dl.by_step(peer, nm.GRAD_NORM)) == [0, 1, 2]
    assert dl.by_step(peer, nm.BETA1)[0] == 0.9


def test_failing_hparams_probe_is_reported_once_and_the_rest_keeps_running(
        peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    from spikewatch.agent._collect import Collector
    from spikewatch.agent._probes import HparamsProbe

    def broken(self: HparamsProbe, step: int, out: Collector) -> None:
        if step >= 3:
            raise KeyError("lr")
        original(self, step, out)
    original = HparamsProbe.post
    monkeypatch.setattr(HparamsProbe, "post", broken)
    model, x, y = _mlp(8)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor = agent.attach(model, opt, run="unit-hparams-error", endpoint=peer.endpoint)
    _train(monitor, model, opt, x, y, 8)
    dl.closed_and_delivered(peer, monitor)
    errors = dl.events(peer, EventType.PROBE_ERROR.value)
    reported = [(s, e.data["probe"], e.data["error"]) for s, e in errors]
    assert reported == [(3, "hparams", "KeyError")]
    assert sorted(dl.by_step(peer, nm.LR)) == [0, 1, 2]  # disabled at the failure
    assert sorted(dl.by_step(peer, nm.LOSS)) == list(range(8))
    assert sorted(dl.by_step(peer, nm.GRAD_NORM)) == list(range(8))


def test_forward_hooks_that_are_never_called_are_reported_not_silently_missing(
        peer: Peer) -> None:
    model, x, y = _mlp(9)
    unused = nn.Linear(24, 3)  # declared as the logits module, but the forward never calls it
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor = agent.attach(model, opt, run="unit-unused-logits", endpoint=peer.endpoint,
                           profile="full", overhead_budget=math.inf, logits_module=unused)
    _train(monitor, model, opt, x, y, 6)
    dl.closed_and_delivered(peer, monitor)
    errors = dl.events(peer, EventType.PROBE_ERROR.value)
    reported = [(s, e.data["probe"], e.data["error"], e.data["disabled"]) for s, e in errors]
    assert reported == [(1, "logits", "HooksNotCalledError", True)]  # two armed steps, 0 and 1
    assert "Linear" in str(errors[0][1].data["message"])
    assert not unused._forward_hooks  # disarmed: its hooks are gone
    assert sorted(dl.by_step(peer, nm.SA_SIGN_DIVERSITY)) == [0, 5]  # the other probe carries on


def test_cadence_stretches_under_budget_with_injected_clock(peer: Peer) -> None:
    """Every reading of the agent's clock costs 1 ms; a training step costs 40 ms."""

    class Clock:
        t = 0.0

        def __call__(self) -> float:
            self.t += 0.001
            return self.t

    model, x, y = _mlp(8)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def closure() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y)

    clock = Clock()
    cfg = resolve(run="unit-budget", endpoint=peer.endpoint, profile="full",
                                 overhead_budget=0.05, env={})
    monitor = Monitor(model, opt, cfg, closure=closure, clock=clock)
    for _ in range(120):
        clock.t += 0.040
        opt.zero_grad()
        loss = closure()
        torch.autograd.backward(loss)
        opt.step()
        monitor.log(loss=loss)
    dl.closed_and_delivered(peer, monitor)
    recs = [r for r in dl.records(peer) if nm.AGENT_CADENCE in r.layers]
    assert len(recs) >= 10
    first, last = recs[0].layers[nm.AGENT_CADENCE], recs[-1].layers[nm.AGENT_CADENCE]
    assert first["loss"] == last["loss"] == 1.0  # never stretched
    stretched = [p for p in ("curvature", "lambda_max", "alignment", "spike_share", "precond")
                 if last[p] > _full_cadence(p)]
    assert stretched, last
    assert recs[0].scalars[nm.AGENT_OVERHEAD] > 0.05
    assert recs[-1].scalars[nm.AGENT_OVERHEAD] < recs[0].scalars[nm.AGENT_OVERHEAD]
    # cadences are powers of two times the profile's
    for p in stretched:
        ratio = last[p] / _full_cadence(p)
        assert ratio == 2 ** round(math.log2(ratio))
    # the probes run at the cadences streamed: a cadence set at the drain that ended step s
    # (reported on record s - 1) holds from step s + 1 on
    rho_steps = set(dl.by_step(peer, nm.RHO))
    reports = [(r.step, r.layers[nm.AGENT_CADENCE]["precond"]) for r in recs]
    checked = 0
    for (s0, c), (s1, c1) in itertools.pairwise(reports):
        if c == c1:
            span = range(s0 + 2, s1 + 2)
            assert {s for s in rho_steps if s in span} == {s for s in span if s % c == 0}
            checked += 1
    assert checked >= 5


def _full_cadence(probe: str) -> int:
    return PROFILES["full"].cadences[probe]


def test_auto_curvature_falls_back_to_finite_differences(peer: Peer) -> None:
    """CPU flash attention has no double backward: exact HVPs fail, finite differences work."""
    torch.manual_seed(9)
    qkv, head = nn.Linear(8, 24), nn.Linear(8, 3)
    model = nn.ModuleDict({"qkv": qkv, "head": head})
    x, y = torch.randn(4, 5, 8), torch.randint(0, 3, (4,))

    def forward() -> torch.Tensor:
        q, k, v = (t.unsqueeze(1) for t in qkv(x).chunk(3, dim=-1))
        h = nn.functional.scaled_dot_product_attention(q, k, v).squeeze(1).mean(dim=1)
        return nn.functional.cross_entropy(head(h), y)

    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor = agent.attach(model, opt, run="unit-fallback", endpoint=peer.endpoint,
                           closure=forward, profile="full", overhead_budget=math.inf)
    for _ in range(4):
        opt.zero_grad()
        loss = forward()
        torch.autograd.backward(loss)
        opt.step()
        monitor.log(loss=loss)
    dl.closed_and_delivered(peer, monitor)
    assert dl.hello(peer).meta["curvature"] == "exact"
    switches = dl.events(peer, EventType.PROBE_ERROR.value)
    assert [(s, e.data["switched_to"], e.data["disabled"]) for s, e in switches] == [
        (0, "fd", False)]
    assert "not implemented" in str(switches[0][1].data["message"])
    lam = dl.by_step(peer, nm.LAMBDA_GRAD)
    assert 0 in lam
    assert all(math.isfinite(v) for v in lam.values())
    assert 0 in dl.by_step(peer, nm.LAMBDA_MAX)


def test_curve_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    server_pub, server_sec = zmq.curve_keypair()
    _, client_sec = zmq.curve_keypair()
    with Peer(curve_secret_key=server_sec) as secure:
        monkeypatch.setenv("SPIKEWATCH_SERVER_KEY", server_pub.decode())
        monkeypatch.setenv("SPIKEWATCH_CLIENT_KEY", client_sec.decode())
        model, x, y = _mlp(11)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        monitor = agent.attach(model, opt, run="unit-curve", endpoint=secure.endpoint)
        for _ in range(2):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            torch.autograd.backward(loss)
            opt.step()
            monitor.log(loss=loss)
        dl.closed_and_delivered(secure, monitor)
        assert dl.hello(secure).header.run == "unit-curve"
        assert sorted(dl.by_step(secure, nm.LOSS)) == [0, 1]


def test_hyperparameter_jumps_become_events(peer: Peer) -> None:
    model, x, y = _mlp(12)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor = agent.attach(model, opt, run="unit-hparams", endpoint=peer.endpoint,
                           overhead_budget=math.inf)

    def edit(step: int) -> None:
        if step == 5:
            opt.param_groups[0]["betas"] = (0.97, 0.999)  # β1 raised, buffer not rescaled
        if step == 8:
            opt.param_groups[0]["lr"] = 0.001

    _train(monitor, model, opt, x, y, 12, edit)
    dl.closed_and_delivered(peer, monitor)
    jumps = dl.events(peer, EventType.MOMENTUM_JUMP.value)
    assert [(s, e.data["old"], e.data["new"]) for s, e in jumps] == [(5, 0.9, 0.97)]
    assert jumps[0][1].data["rescaled"] is False
    assert jumps[0][1].data["buffer_ratio"] == 1.0  # version counter unmoved: exactly untouched
    assert jumps[0][1].data["needs_rescale"] is False
    changes = {(s, e.data["hparam"]) for s, e in dl.events(peer, EventType.HPARAM_CHANGE.value)}
    assert {(5, "beta1"), (8, "lr")} <= changes
    # every step carries its values, also the quiet ones that reuse the last host numbers
    assert dl.by_step(peer, nm.LR) == {s: 0.01 if s < 8 else 0.001 for s in range(12)}
    assert dl.by_step(peer, nm.BETA1) == {s: 0.9 if s < 5 else 0.97 for s in range(12)}


def test_an_lr_schedule_streams_its_lr_and_reports_only_its_jumps(peer: Peer) -> None:
    """The lr moves at every step (the cheap path of a schedule): each step carries its own lr,
    the smooth moves make no event, a 10x drop inside the schedule and a later β1 change do."""
    model, x, y = _mlp(15)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (0.1 if s >= 9 else 1.0) * (1.0 - 0.002 * s))
    monitor = agent.attach(model, opt, run="unit-schedule", endpoint=peer.endpoint,
                           overhead_budget=math.inf)
    lrs: dict[int, float] = {}

    def edit(step: int) -> None:
        if step:
            schedule.step()
        if step == 14:
            opt.param_groups[0]["betas"] = (0.95, 0.999)
        lrs[step] = opt.param_groups[0]["lr"]

    _train(monitor, model, opt, x, y, 18, edit)
    dl.closed_and_delivered(peer, monitor)
    assert dl.by_step(peer, nm.LR) == pytest.approx(lrs)
    changes = [(s, e.data["hparam"]) for s, e in dl.events(peer, EventType.HPARAM_CHANGE.value)]
    assert changes == [(9, "lr"), (14, "beta1")]
    (drop,) = [e for s, e in dl.events(peer, EventType.HPARAM_CHANGE.value) if s == 9]
    assert drop.data["old"] == pytest.approx(lrs[8])  # from the lr the schedule had just set
    assert drop.data["new"] == pytest.approx(lrs[9])
    assert dl.by_step(peer, nm.BETA1) == {s: 0.9 if s < 14 else 0.95 for s in range(18)}


def test_in_place_buffer_rescale_is_measured_at_the_jump(peer: Peer) -> None:
    model, x, y = _mlp(13)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor = agent.attach(model, opt, run="unit-rescale", endpoint=peer.endpoint,
                           overhead_budget=math.inf)
    note = (1 - 0.9) / (1 - 0.97)

    def rescale(step: int) -> None:
        if step == 4:  # the seed note's recipe: raise β1 and rescale every buffer in place
            opt.param_groups[0]["betas"] = (0.97, 0.999)
            with torch.no_grad():
                for st in opt.state.values():
                    st["exp_avg"].mul_(note)

    _train(monitor, model, opt, x, y, 8, rescale)
    dl.closed_and_delivered(peer, monitor)
    (jump,) = dl.events(peer, EventType.MOMENTUM_JUMP.value)
    assert jump[0] == 4
    # the agent reads the buffer's version counter, not its norm (no kernel per step): it knows
    # the buffer was rewritten, not by how much
    assert jump[1].data["buffer_ratio"] is None
    assert jump[1].data["rescaled"] is True
    assert jump[1].data["needs_rescale"] is True  # Adam's exp_avg is an average: advised 1


def test_cadences_hold_and_forward_hooks_exist_only_on_armed_steps(peer: Peer) -> None:
    model, x, y = _mlp(14)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor = agent.attach(model, opt, run="unit-cadence", endpoint=peer.endpoint,
                           profile="default", overhead_budget=math.inf, logits_module=model[2])
    hooked: list[bool] = []
    _train(monitor, model, opt, x, y, 24,
           lambda _: hooked.append(bool(model[0]._forward_hooks or model[2]._forward_hooks)))
    dl.closed_and_delivered(peer, monitor)
    # default profile: logits every 10 steps, alignment every 100; other steps keep the modules
    # on PyTorch's hook-free path
    assert [s for s, h in enumerate(hooked) if h] == [0, 10, 20]
    assert not model[0]._forward_hooks
    assert not model[2]._forward_hooks
    assert sorted(dl.by_step(peer, nm.RHO)) == [0, 10, 20]
    # the predictor every step: a reading of gradient i needs the step after it, and four
    # consecutive steps to start
    assert sorted(dl.by_step(peer, nm.STABILITY_RATIO_TWO_SECANT)) == list(range(2, 23))
    assert sorted(dl.by_step(peer, nm.MAX_PROB)) == [0, 10, 20]
