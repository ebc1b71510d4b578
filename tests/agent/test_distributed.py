"""Distributed: two CPU processes on gloo. Under a sharded optimizer (ZeroRedundancyOptimizer over
DDP) each rank streams partial sums of its shard; combined as the server would (Combine ops of
spikewatch.protocol.names) they equal the global values of the same training run in a single
process."""

from __future__ import annotations

import gc
import math
import multiprocessing

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

from spikewatch import agent
from spikewatch.agent._two_secant_probe import BATCH
from spikewatch.monitor.precond_decay import PreconditionerDecay
from spikewatch.monitor.two_secant import TwoSecant
from spikewatch.protocol import names as nm
from spikewatch.protocol import wire
from spikewatch.protocol.names import Combine
from tests._net import free_port
from tests.agent._peer import Peer

STEPS = 8
LR = 0.01


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 1))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 5, generator=g), torch.randn(64, 1, generator=g)


def _worker(rank: int, world: int, port: int, endpoint: str, mode: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        _train(rank, world, endpoint, mode)
    finally:
        # DDP's reducer must be gone before its process group: torch 2.13 on gloo hangs now and
        # then (in plain torch, without the agent) when the order is the other way round.
        gc.collect()
        dist.destroy_process_group()


def _train(rank: int, world: int, endpoint: str, mode: str) -> None:
    torch.set_num_threads(1)
    model = DistributedDataParallel(_model())
    if mode == "zero":
        opt: torch.optim.Optimizer = ZeroRedundancyOptimizer(
            model.parameters(), optimizer_class=torch.optim.Adam, lr=LR)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=LR)
    x, y = _data()
    half = len(x) // world
    xs, ys = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
    if mode == "guard":
        _guard_run(rank, model, opt, xs, ys, endpoint)
        return
    monitor = agent.attach(model, opt, run=f"dist-{mode}", endpoint=endpoint,
                           profile="full", overhead_budget=math.inf, ddp_ranks="rank0",
                           sample_fraction=1.0)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(xs), ys)
        torch.autograd.backward(loss)
        opt.step()
        monitor.log(loss=loss)
    monitor.close(timeout=5.0)
    dist.barrier()  # both ranks are done with collectives before either tears down


def _guard_run(rank: int, model: nn.Module, opt: torch.optim.Optimizer, xs: torch.Tensor,
               ys: torch.Tensor, endpoint: str) -> None:  # fmt: skip
    """The guard under DDP with the default budget (1 %) and ddp_ranks="rank0": the readings
    due at steps 3 and 4 say "past the edge" and the one due at step 16 says "runaway" (made so
    here; the run is healthy), and every rank must lift v, then catch it up, at the same steps,
    or the replicas drift apart."""
    from spikewatch.agent._guard import GuardMachine

    real = GuardMachine.observe

    def past_edge(self: GuardMachine, step: int, ratio: float, rho: float, rise: float,
                  made: int | None = None) -> list[tuple[str, dict[str, object]]]:  # fmt: skip
        due = step if made is None else made
        hot = due in (3, 4)  # the readings due at steps 3 and 4
        runaway = due == 16  # ρ ≥ catch_rho: v caught up to g² at the next step
        return real(self, step, 1.5 if hot else ratio,
                    0.01 if hot else 20.0 if runaway else rho, rise, made)

    GuardMachine.observe = past_edge  # type: ignore[method-assign]
    monitor = agent.attach(model, opt, run="dist-guard", endpoint=endpoint, guard=True,
                           ddp_ranks="rank0")
    for _ in range(3 * STEPS):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(xs), ys)
        torch.autograd.backward(loss)
        opt.step()
        monitor.log(loss=loss)
    guard = monitor._guard
    assert guard is not None
    assert guard.machine.actions == 1, (rank, guard.machine.actions)
    assert guard.machine.catches == 1, (rank, guard.machine.catches)
    # each rank's losses differ: neither the rise nor the eval_loss swings gate it under DDP
    assert (guard.machine.policy.rise, guard.machine.policy.swings) == (1.0, 0)
    monitor.close(timeout=5.0)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    both = [torch.zeros_like(flat) for _ in range(2)]
    dist.all_gather(both, flat)
    assert torch.equal(both[0], both[1]), "the replicas drifted apart"
    dist.barrier()


def _reference() -> tuple[list[float], list[float], dict[int, tuple[float, float, float]]]:
    """Global ‖g‖, ρ and the two-secant readings (every coordinate) of the same run in one
    process (full batch = mean of the two halves)."""
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    pd = PreconditionerDecay(include_current_grad=True)
    est = TwoSecant(opt, fraction=1.0)
    x, y = _data()
    gn, rho = [], []
    two: dict[int, tuple[float, float, float]] = {}
    for k in range(STEPS):
        opt.zero_grad()
        torch.autograd.backward(nn.functional.mse_loss(model(x), y))
        gn.append(float(torch.cat([p.grad.flatten() for p in model.parameters()
                                   if p.grad is not None]).norm()))
        rho.append(float(pd.update(opt).rho))
        opt.step()
        r = est.update(k + 1)
        if r is not None:
            two[r.step] = (float(r.lambda_two_secant), float(r.stability_ratio), float(r.rho))
    return gn, rho, two


def _run(peer: Peer, mode: str) -> list[wire.Batch]:
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(rank, 2, port, peer.endpoint, mode))
             for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    assert [p.exitcode for p in procs] == [0, 0]
    return [m for m in peer.first_seen() if isinstance(m, wire.Batch)]


def _combine(parts: list[wire.Partial]) -> float:
    op = parts[0].op
    assert all(p.op == op for p in parts)
    if op == Combine.SQRT_RATIO:
        return math.sqrt(sum(p.num for p in parts) / sum(p.den for p in parts))
    if op == Combine.RATIO:
        return sum(p.num for p in parts) / sum(p.den for p in parts)
    if op == Combine.MAX:
        return max(p.num for p in parts)
    raise AssertionError(op)


@pytest.mark.slow
def test_sharded_partials_combine_to_the_global_values(peer: Peer) -> None:
    batches = _run(peer, "zero")
    hellos = [m for m in peer.first_seen() if isinstance(m, wire.Hello)]
    assert sorted(h.header.rank for h in hellos) == [0, 1]  # sharded: every rank reports
    assert all(h.meta["sharded"] is True and h.header.world_size == 2 for h in hellos)
    partials: dict[tuple[str, int], dict[int, wire.Partial]] = {}
    for b in batches:
        for r in b.records:
            for name, p in r.partials.items():
                partials.setdefault((name, r.step), {})[b.header.rank] = p
    gn_ref, rho_ref, two_ref = _reference()
    assert sorted(two_ref) == list(range(2, STEPS - 1))
    for step, want in two_ref.items():  # the predictor's shards add up to the whole model's
        for i, name in enumerate((nm.LAMBDA_TWO_SECANT, nm.STABILITY_RATIO_TWO_SECANT,
                                  nm.RHO_SAMPLED)):
            parts = partials[(name, step)]
            assert sorted(parts) == [0, 1]
            assert parts[0].op == nm.BY_NAME[name].combine
            assert _combine(list(parts.values())) == pytest.approx(want[i], rel=1e-4), name
    for step in range(STEPS):
        gn_parts = partials[(nm.GRAD_NORM, step)]
        rho_parts = partials[(nm.RHO, step)]
        assert sorted(gn_parts) == sorted(rho_parts) == [0, 1]
        # each rank holds a strict part of the state: its shard alone is not the global value
        assert gn_parts[0].num > 0
        assert gn_parts[1].num > 0
        assert _combine(list(gn_parts.values())) == pytest.approx(gn_ref[step], rel=1e-4)
        assert _combine(list(rho_parts.values())) == pytest.approx(rho_ref[step], rel=1e-4)
        assert rho_parts[0].op == nm.BY_NAME[nm.RHO].combine
    losses = {(b.header.rank, r.step) for b in batches for r in b.records
              if nm.LOSS in r.scalars}
    assert {s for _, s in losses} == set(range(STEPS))


@pytest.mark.slow
def test_ddp_rank0_only(peer: Peer) -> None:
    batches = _run(peer, "ddp")
    hellos = [m for m in peer.first_seen() if isinstance(m, wire.Hello)]
    assert [h.header.rank for h in hellos] == [0]
    assert hellos[0].meta["sharded"] is False
    assert {b.header.rank for b in batches} == {0}
    gn_ref, _, two_ref = _reference()
    gn = {r.step: r.scalars[nm.GRAD_NORM] for b in batches for r in b.records
          if nm.GRAD_NORM in r.scalars}
    # DDP all-reduces gradients: rank 0's full-model norm is the global one
    assert [gn[s] for s in range(STEPS)] == pytest.approx(gn_ref, rel=1e-4)
    ratio = {r.step: r.scalars[nm.STABILITY_RATIO_TWO_SECANT] for b in batches for r in b.records
             if nm.STABILITY_RATIO_TWO_SECANT in r.scalars}
    assert ratio == pytest.approx({s: v[1] for s, v in two_ref.items()}, rel=1e-4)


@pytest.mark.slow
def test_ddp_guard_acts_on_every_rank_at_the_same_step(peer: Peer) -> None:
    batches = _run(peer, "guard")  # each rank asserts its action and equal replicas
    assert {b.header.rank for b in batches} == {0}  # rank 1 watches but streams nothing
    acts = [(r.step, e) for b in batches for r in b.records for e in r.events
            if e.type == "guard_action"]
    # the second hot reading (due at step 4) comes with the batch of steps 4-7: the real ratio
    # of this healthy run is below EAGER_RATIO, where readings are computed every BATCH steps
    assert BATCH == 4
    assert [(s, e.data["action"]) for s, e in acts] == [(7, "v"), (19, "v_catch_up")]
