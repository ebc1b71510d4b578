"""`attach()` and the `Monitor`: hooks into a live model and optimizer, scheduling, drain, send.

The training loop stays unchanged. The optimizer's pre-step hook (or, when `step(closure)` is used,
the moment the closure returns) runs the gradient/state probes; the post-step hook advances the
step, arms the forward hooks for the next step and, on the drain cadence, copies everything
pending to the host in one transfer, runs the reactive detectors and the phase labeller on the
drained floats, and hands records to the transport (which never blocks). Any exception inside the
agent is caught: a failing probe is disabled and reported as a PROBE_ERROR event.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import os
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from spikewatch.agent._collect import Collector
from spikewatch.agent._config import Config, resolve
from spikewatch.agent._distributed import World, detect, local_optimizer
from spikewatch.agent._forward_probes import (
    AlignmentProbe,
    Armed,
    HookEnv,
    HookGate,
    LogitsProbe,
    over_confidence,
)
from spikewatch.agent._guard import Guard, GuardHooks
from spikewatch.agent._layers import is_compiled, select_layers, uncompiled
from spikewatch.agent._probes import (
    Closure,
    Ctx,
    HparamsProbe,
    Probe,
    layer_name,
)
from spikewatch.agent._profiles import (
    ALIGNMENT,
    CURVATURE,
    HPARAMS,
    LAMBDA_MAX,
    LOGITS,
    PRECOND,
    PROFILES,
    TWO_SECANT,
)
from spikewatch.agent._reactive import Reactive, record_ratio
from spikewatch.agent._scheduler import HEADROOM, UNTIMED, Clock, Report, Scheduler
from spikewatch.agent._two_secant_probe import TwoSecantProbe
from spikewatch.agent._untraced import untraced
from spikewatch.protocol import names as nm
from spikewatch.protocol import wire
from spikewatch.protocol.names import EventType

__all__ = ["Monitor", "attach"]

log = logging.getLogger("spikewatch.agent")
RECORDS_PER_SUBMIT = 64
_PLAN_STEPS = 64  # steps whose due probes are worked out at once
URGENT_RISE = 1.2  # near the edge after an instability at least this large: send at once
URGENT_EVERY = 4  # steps between such urgent drains
_ERR_LEN = 300


class _NullTransport:
    """Stands in for the transport of a disabled monitor (sends nothing)."""

    def hello(self, meta: Mapping[str, wire.Scalar]) -> bool:
        return True

    def submit(self, records: Sequence[wire.Record], priority: int = 1) -> bool:
        return True

    def counters(self) -> Any:
        return None

    def flush(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float = 2.0) -> None:
        return None


class Monitor:
    """One attached model/optimizer. Create it with `attach`; call `log` per step and `close`."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: Config,
        *,
        closure: Closure | None = None,
        layers: Iterable[str | nn.Module] | None = None,
        logits_module: nn.Module | None = None,
        transport: Any = None,
        clock: Clock | None = None,
        world: World | None = None,
        guard: Guard | None = None,
    ) -> None:
        self.config = config
        compiled = is_compiled(model)
        model = uncompiled(model)
        self.model = model
        self.optimizer = optimizer
        self.world = world or detect(model, optimizer)
        # ddp_ranks="rank0": the other DDP ranks stream nothing; with a guard they still watch,
        # so that every rank takes the guard's decisions at the same step (replicas stay equal)
        quiet = config.ddp_ranks == "rank0" and self.world.rank != 0 and not self.world.sharded
        self.enabled = config.enabled and (not quiet or guard is not None)
        # with a sharded optimizer each rank holds part of the reading: no local decision
        watching = guard is not None and not self.world.sharded
        self._closed = False
        self._handles: list[Any] = []
        self._armed: list[Armed] = []
        self._probes: list[Probe] = []
        self._disabled: set[str] = set()
        self._reported: set[str] = set()
        if not self.enabled:
            self.transport: Any = _NullTransport()
            return
        local = local_optimizer(optimizer)
        self.step = _resumed_step(local)
        self.resumed_at = self.step
        self._stepped_since_log = False
        self._due_probes: list[Probe] = []  # the probes due at `self.step` (see `_plan`)
        self._table: list[tuple[list[Probe], frozenset[Armed]]] = []  # plans from _table_at on
        self._table_at = 0
        self._table_version = -1
        self._gate = HookGate()  # open while a forward-hook probe is armed
        self._in_graph: frozenset[str] = frozenset()  # probes capturing in this step's graph
        self._hparams: HparamsProbe | None = None  # every-step probe, run inside the hooks
        self._follow: list[Probe] = []  # probes that asked to run at the coming step
        self._prediction_cadence: int | None = None  # as last reported
        self._urgent_at = -URGENT_EVERY  # the step of the last urgent drain
        self.scheduler = Scheduler(PROFILES[config.profile], config.overhead_budget,
                                   **({"clock": clock} if clock is not None else {}),
                                   stretch=not self.world.sharded, untimed=UNTIMED,
                                   headroom=HEADROOM, bursts={TWO_SECANT: TwoSecantProbe.burst},
                                   pin_predictor=watching and self.world.world_size > 1)
        self.out = Collector()
        self.last_report: Report | None = None  # the scheduler's last overhead measurement
        names: dict[Tensor, str] = {p: layer_name(n, "param")
                                    for n, p in model.named_parameters()}
        self.ctx = Ctx(model, local, names, self.world, closure,
                       _backend(config.curvature, closure), auto=config.curvature == "auto")
        self._reactive = Reactive()
        self._guard = GuardHooks(guard) if guard is not None and watching else None
        if guard is not None and not watching:
            log.warning("spikewatch guard: off under a sharded optimizer (each rank holds part "
                        "of the reading)")
        self._build_probes(layers, logits_module, compiled=compiled)
        self.transport = (_NullTransport() if quiet else transport if transport is not None
                          else _make_transport(config, self.world))
        self.transport.hello(self._meta(model, local))
        if self.resumed_at > 0:
            self._event(self.step, EventType.RESUMED, resumed_at_step=self.resumed_at)
        self._handles.append(optimizer.register_step_pre_hook(self._pre_hook))
        self._handles.append(optimizer.register_step_post_hook(self._post_hook))
        self._plan(self.step)
        _live.add(self)
        _register_exit()

    # --- public API -------------------------------------------------------------------------
    @untraced  # a compiled training step calls the agent, never traces it
    def log(self, loss: Tensor | float | None = None, *, step: int | None = None,
            logits: Tensor | None = None, **scalars: Tensor | float) -> None:
        """Record this step's loss (tensor or float), optional logits and extra scalars.

        `step` defaults to the optimizer step this loss belongs to. Never synchronises, never
        raises: bad input is reported once as a PROBE_ERROR event and in the log.
        """
        if not self.enabled or self._closed:
            return
        sched = self.scheduler
        t0 = sched.now()
        try:
            s = step if step is not None else (
                self.step - 1 if self._stepped_since_log else self.step)
            self._stepped_since_log = False
            if loss is not None:
                self.out.scalar(s, nm.LOSS, _value(loss, "loss"))
            for k, v in scalars.items():
                if not wire.METRIC_RE.match(k):
                    raise ValueError(f"log(): metric name {k!r} must match "
                                     f"{wire.METRIC_RE.pattern}")
                self.out.scalar(s, k, _value(v, k))
            if logits is not None and sched.due(LOGITS, s) and LOGITS not in self._disabled:
                over_confidence(s, logits, self.out)
            if self.out.full:  # log() without optimizer steps must not grow without bound
                self._drain()
        except Exception as e:
            self._fail("log", e, disable=False)
        finally:
            sched.add(None, sched.now() - t0)

    def close(self, timeout: float = 5.0) -> None:
        """Drain what is pending, remove the hooks and close the transport within ~`timeout` s."""
        if self._closed:
            return
        self._closed = True
        _live.discard(self)
        for h in self._handles:
            h.remove()
        for a in self._armed:
            a.remove()
        if self.enabled:
            try:
                self._drain()
            except Exception as e:  # never let close() raise into the training script
                log.warning("spikewatch: final drain failed: %s", e)
        try:
            self.transport.close(timeout=timeout)
        except Exception as e:
            log.warning("spikewatch: transport close failed: %s", e)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def counters(self) -> Any:
        """The transport's counters (queued, sent, acked, spooled, dropped, ...)."""
        return self.transport.counters()

    # --- setup ------------------------------------------------------------------------------
    def _build_probes(self, layers: Iterable[str | nn.Module] | None,
                      logits_module: nn.Module | None, *, compiled: bool) -> None:
        from spikewatch.agent import _probes as pr

        ctx = self.ctx
        adam = isinstance(ctx.optimizer, torch.optim.Adam)
        kinds: list[type[Probe]] = [pr.HparamsProbe, pr.GradNormProbe, pr.SpikeShareProbe]
        if adam or isinstance(ctx.optimizer, torch.optim.SGD):
            kinds += [TwoSecantProbe]  # refuses Nesterov SGD with a reported error
        if adam:
            kinds += [pr.PrecondProbe]
            if not self.world.sharded and ctx.curvature in ("exact", "fd"):
                kinds += [pr.CurvatureProbe, pr.LambdaMaxProbe]
        else:
            self._event(self.step, EventType.PROBE_ERROR, probe="precond",
                        error="UnsupportedOptimizer",
                        message=f"{type(ctx.optimizer).__name__}: Adam-state signals are off")
        for kind in kinds:
            if self.scheduler.cadence(kind.name) == 0:
                continue
            try:
                probe = (TwoSecantProbe(ctx, self.config.sample_fraction)
                         if kind is TwoSecantProbe else kind(ctx))
            except Exception as e:
                self._fail(kind.name, e)
                continue
            if isinstance(probe, TwoSecantProbe):
                ctx.predictor = probe
            if isinstance(probe, HparamsProbe) and self.scheduler.cadence(HPARAMS) == 1:
                self._hparams = probe  # every step: called inline, timed with the hooks
            else:
                self._probes.append(probe)
        for name in (CURVATURE, LAMBDA_MAX, PRECOND, TWO_SECANT):
            if not any(p.name == name for p in self._probes):
                self.scheduler.disable(name)
        env = HookEnv(self.out, self._fail_armed, self.scheduler.now, self.scheduler.add,
                      self._gate, compiled=compiled)
        if self.scheduler.cadence(ALIGNMENT) > 0:
            try:
                sel = select_layers(self.model, layers)
                if sel:
                    self._armed.append(AlignmentProbe(sel, env))
            except Exception as e:
                self._fail(ALIGNMENT, e)
        if logits_module is not None and self.scheduler.cadence(LOGITS) > 0:
            self._armed.append(LogitsProbe(logits_module, env))

    def _meta(self, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, wire.Scalar]:
        meta: dict[str, wire.Scalar] = {
            "model_parameters": sum(p.numel() for p in model.parameters()),
            "model_class": type(model).__name__,
            "optimizer": type(self.optimizer).__name__,
            "optimizer_inner": type(opt).__name__,
            "param_groups": len(opt.param_groups),
            "world_size": self.world.world_size,
            "rank": self.world.rank,
            "sharded": self.world.sharded,
            "resumed_at_step": self.resumed_at,
            "torch_version": str(torch.__version__),
            "profile": self.config.profile,
            "curvature": self.ctx.curvature,
            "overhead_budget": self.config.overhead_budget,
            "ddp_ranks": self.config.ddp_ranks,
            "pid": os.getpid(),
            "closure": self.ctx.closure is not None,
        }
        g0 = opt.param_groups[0] if opt.param_groups else {}
        for k, v in g0.items():
            if k == "params" or not wire.KEY_RE.match(k):
                continue
            if k == "betas" and isinstance(v, tuple | list) and len(v) == 2:
                meta["beta1"], meta["beta2"] = _host(v[0]), _host(v[1])
            elif isinstance(v, bool | int | float | str) or v is None:
                meta[k] = v
            elif isinstance(v, Tensor) and v.numel() == 1:
                meta[k] = _host(v)
        return meta

    # --- hooks ------------------------------------------------------------------------------
    @untraced
    def _pre_hook(self, opt: torch.optim.Optimizer, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if self._closed:
            return None
        # args[0] is the optimizer itself; step(closure) passes the closure next or by keyword
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if callable(closure):
            # step(closure): gradients exist only once the closure ran inside step().
            wrapped = self._wrap_closure(closure)
            if "closure" in kwargs:
                return args, {**kwargs, "closure": wrapped}
            return (args[0], wrapped, *args[2:]), kwargs
        self._before_step()
        return None

    def _wrap_closure(self, closure: Callable[[], Any]) -> Callable[[], Any]:
        done = False

        def wrapped() -> Any:
            nonlocal done
            result = closure()
            if not done:
                done = True
                self._before_step()
            return result
        return wrapped

    @untraced
    def _post_hook(self, opt: torch.optim.Optimizer, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> None:
        if not self._closed:
            self._after_step()

    def _run(self, probe: Probe, phase: str, step: int, *, due: bool = True) -> float:
        sched = self.scheduler
        t0 = sched.now()
        try:
            getattr(probe, phase)(step, self.out)
        except Exception as e:
            self._fail(probe.name, e)
        dt = sched.now() - t0
        sched.add(probe.name, dt, follow=not due)
        return dt

    def _run_followed(self, phase: str, step: int, due: Sequence[Probe]) -> float:
        """Run, off their cadence, the probes that asked for this step in this phase; keep
        those that ask for the next one. Returns the seconds spent."""
        if not self._follow:
            return 0.0
        spent = 0.0
        keep = []
        for p in self._follow:
            if p.follow_phase != phase:
                keep.append(p)
            elif p.follow == step and p not in due and p.name not in self._disabled:
                spent += self._run(p, phase, step, due=False)
                if p.follow == step + 1:
                    keep.append(p)
        self._follow = keep
        return spent

    def _run_hparams(self, phase: Callable[[int, Collector], None], step: int) -> None:
        """One half of the every-step hyper-parameter probe, timed with its hook (it is part of
        the fixed per-step cost); disabled at its first failure."""
        try:
            phase(step, self.out)
        except Exception as e:
            self._hparams = None
            self._fail(HPARAMS, e)

    def _plan(self, step: int) -> None:
        """Set the probes due at `step` (both hooks use the list) and arm the forward-hook probes
        due at it; called when the previous step ends. Plans are made `_PLAN_STEPS` steps at a
        time and remade when a cadence changes."""
        i = step - self._table_at
        if not 0 <= i < len(self._table) or self._table_version != self.scheduler.version:
            self._make_table(step)
            i = 0
        self._due_probes, arm = self._table[i]
        if arm or self._gate.open:
            off = self._disabled
            for a in self._armed:
                a.arm(step if a in arm and a.name not in off else None)
            self._gate.open = bool(arm)
            self._in_graph = frozenset(a.name for a in self._armed
                                       if a.armed_step == step and a.traced)

    def _make_table(self, start: int) -> None:
        sched = self.scheduler
        off = self._disabled
        table = []
        for step in range(start, start + _PLAN_STEPS):
            due = sched.due_at(step)
            table.append(([p for p in self._probes if p.name in due and p.name not in off],
                          frozenset(a for a in self._armed if a.name in due)))
        self._table, self._table_at, self._table_version = table, start, sched.version

    def _before_step(self) -> None:
        sched = self.scheduler
        t0 = sched.now()
        spent = 0.0
        try:
            step = self.step
            if self._gate.open:
                for a in self._armed:
                    a.settle(step)
            if self._hparams is not None:
                self._run_hparams(self._hparams.pre, step)
            if self._guard is not None:  # after the hparams watch: a scaled lr is no change
                self._guard.before(step, self.ctx.optimizer)
            due = self._due_probes
            off = self._disabled
            for p in due:
                if p.name not in off and p.has_pre:
                    spent += self._run(p, "pre", step)
            spent += self._run_followed("pre", step, due)
        except Exception as e:
            self._fail("agent", e, disable=False)
        finally:
            self.ctx.clear()  # drop this hook's views and HVP graph before the update runs
        sched.add(None, sched.now() - t0 - spent)

    def _after_step(self) -> None:
        sched = self.scheduler
        t0 = sched.now()
        spent = 0.0
        step = self.step
        try:
            off = self._disabled
            for p in self._due_probes:
                if p.name not in off and p.has_post:
                    spent += self._run(p, "post", step)
            spent += self._run_followed("post", step, self._due_probes)
            for p in self._due_probes:
                if p.follow is not None and p.name not in off and p not in self._follow:
                    self._follow.append(p)
            self.ctx.clear()
        except Exception as e:
            self._fail("agent", e, disable=False)
        if self._guard is not None:  # the probes read the lr the update used; then it goes back,
            try:  # whatever happened above
                self._guard.after(step, self.ctx.predictor, self._reactive.instability.rise,
                                  self._event)
            except Exception as e:
                self._fail("guard", e, disable=False)
        if self._hparams is not None:  # after the guard: the lr it records is the user's
            self._run_hparams(self._hparams.post, step)
        self.step = step + 1
        self._stepped_since_log = True
        sched.add(None, sched.now() - t0 - spent)
        sched.step_end(self._in_graph)
        t1 = sched.now()
        try:
            urgent = self._urgent(step)
            if urgent:  # a page may be due before the next drain: send it now
                self._drain(upto=None if urgent == "hparams" else step - 1, window=False)
            elif sched.drain_due(step) or self.out.full:
                # the loss of this step is usually logged after step(): leave its record open
                self._drain(upto=step - 1)
        except Exception as e:
            self._fail("drain", e, disable=False)
        try:
            self._plan(step + 1)
        except Exception as e:
            self._due_probes = []  # a stale plan would run last step's probes
            self._fail("agent", e, disable=False)
        sched.add(None, sched.now() - t1)

    def _urgent(self, step: int) -> str | None:
        """Why to send now, if so: "hparams", a hyper-parameter change past the edge (its event
        is at this step: all of it goes), or "edge", a ratio near the edge in a run whose last
        instability moved the loss (what the page waits for; the steps before this one go, this
        step's loss is still to come), at most every `URGENT_EVERY` steps while it lasts."""
        ctx = self.ctx
        urgent, near = ctx.urgent, ctx.near_edge
        ctx.urgent = ctx.near_edge = False
        if urgent:
            self._urgent_at = step
            return "hparams"
        if (near and self._reactive.instability.rise >= URGENT_RISE
                and step - self._urgent_at >= URGENT_EVERY):
            self._urgent_at = step
            return "edge"
        return None

    # --- errors and events ------------------------------------------------------------------
    def _event(self, step: int, kind: str, **data: wire.Scalar) -> None:
        if self.enabled:
            self.out.event(step, wire.Event(str(kind), data))

    def _fail(self, probe: str, e: BaseException, *, disable: bool = True) -> None:
        """Report a failure once (PROBE_ERROR event + log); disable the probe unless told not to."""
        first = probe not in self._reported
        self._reported.add(probe)
        if disable:
            self._disabled.add(probe)
            if self.enabled:
                self.scheduler.disable(probe)
        if first:
            log.warning("spikewatch: probe %s failed%s: %s: %s", probe,
                        " and is disabled" if disable else "", type(e).__name__, e)
            self._event(getattr(self, "step", 0), EventType.PROBE_ERROR, probe=probe,
                        error=type(e).__name__, message=str(e)[:_ERR_LEN], disabled=disable)

    def _fail_armed(self, probe: str, e: BaseException) -> None:
        self._fail(probe, e)
        for a in self._armed:
            if a.name == probe:
                a.arm(None)

    # --- drain ------------------------------------------------------------------------------
    def _drain(self, upto: int | None = None, *, window: bool = True) -> None:
        """Send what was collected. A regular drain (`window`) also closes the overhead budget's
        window and adds the agent's own record; an urgent one only sends, so a burst of urgent
        sends does not cut the window into a few steps whose noise would stretch the predictor
        (their cost still counts in the window)."""
        records = self.out.drain(upto)
        report = self.scheduler.adjust() if window else None
        if report is not None:
            self.last_report = report
        records = self._reactive.observe(records, self._phase_beta2())
        for r in records:
            ratio = record_ratio(r.scalars)
            if ratio is not None and math.isfinite(ratio):
                self.ctx.last_ratio = ratio
        if window:
            last_step = max(self.step - 1, 0)
            extra = self._agent_record(report, records[-1].step if records else last_step)
            if records and records[-1].step == extra.step:
                records[-1] = _merge(records[-1], extra)
            else:
                records.append(extra)
        for i in range(0, len(records), RECORDS_PER_SUBMIT):
            self.transport.submit(records[i:i + RECORDS_PER_SUBMIT])

    def _prediction_events(self, cadence: int) -> tuple[wire.Event, ...]:
        """An event when the predictor's cadence changes (stretched by the budget, switched off
        by a failure, or back to every step)."""
        previous = self._prediction_cadence
        if cadence == previous:
            return ()
        self._prediction_cadence = cadence
        if previous is None and cadence == 1:
            return ()  # the normal start
        if cadence == 0:
            reason = "the predictor is off: " + (
                "the optimizer is not Adam/AdamW or SGD" if TWO_SECANT not in self._reported
                else "it failed (see its probe_error event)")
        elif cadence > 1:
            reason = (f"the overhead budget ({self.config.overhead_budget:g} of step time) cannot "
                      f"hold the predictor every step: it runs every {cadence} steps, and pages "
                      "come later or not at all")
        else:
            reason = "the predictor runs every step again"
        return (wire.Event(EventType.PREDICTION_DEGRADED.value, {
            "cadence": cadence, "previous": -1 if previous is None else previous,
            "reason": reason}),)

    def _phase_beta2(self) -> float:
        g = self.ctx.optimizer.param_groups[0] if self.ctx.optimizer.param_groups else {}
        betas = g.get("betas")
        return _host(betas[1]) if isinstance(betas, tuple | list) else 0.999

    def _agent_record(self, report: Report | None, step: int) -> wire.Record:
        import time

        scalars: dict[str, float] = {}
        layers: dict[str, dict[str, float]] = {}
        if report is not None:
            scalars[nm.AGENT_OVERHEAD] = report.overhead
            scalars[nm.AGENT_STEP_TIME] = report.step_time
            layers[nm.AGENT_CADENCE] = {k: float(v) for k, v in report.cadences.items()}
            if report.probe_overhead:
                layers[nm.AGENT_OVERHEAD] = dict(report.probe_overhead)
        c = self.transport.counters()
        if c is not None:
            for metric, attr in ((nm.AGENT_QUEUED, "queued"), (nm.AGENT_SENT, "sent"),
                                 (nm.AGENT_ACKED, "acked"), (nm.AGENT_SPOOLED, "spooled"),
                                 (nm.AGENT_DROPPED, "dropped")):
                if hasattr(c, attr):
                    scalars[metric] = float(getattr(c, attr))
        cadence = self.scheduler.cadence(TWO_SECANT)
        scalars[nm.AGENT_PREDICTION_CADENCE] = float(cadence)
        if self._guard is not None:
            scalars[nm.GUARD_ACTIONS] = float(self._guard.machine.actions)
            scalars[nm.GUARD_ACTIVE] = float(self._guard.machine.act is not None)
        return wire.Record(step=step, time=time.time(), scalars=scalars, layers=layers,
                           events=self._prediction_events(cadence))


def _merge(a: wire.Record, b: wire.Record) -> wire.Record:
    return dataclasses.replace(a, scalars={**a.scalars, **b.scalars},
                               layers={**a.layers, **b.layers}, events=(*a.events, *b.events))


def _value(v: Any, what: str) -> Tensor | float:
    if isinstance(v, Tensor):
        if v.numel() != 1:
            raise ValueError(f"log(): {what} must be a scalar, got shape {tuple(v.shape)}")
        return v
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"log(): {what} must be a number or a 0-d tensor, got {type(v).__name__}")
    return float(v)


def _host(v: Any) -> float:
    return float(v.item()) if isinstance(v, Tensor) else float(v)


def _resumed_step(opt: torch.optim.Optimizer) -> int:
    """The optimizer state's step count (> 0 when resuming from a checkpoint); read at attach."""
    best = 0
    for state in opt.state.values():
        s = state.get("step") if isinstance(state, dict) else None
        if s is not None:
            best = max(best, round(_host(s)))
    return best


def _backend(curvature: str, closure: Closure | None) -> str:
    if curvature == "auto":
        return "exact" if closure is not None else "secant"
    if curvature in ("exact", "fd") and closure is None:
        raise ValueError(f"curvature={curvature!r} needs closure= (a callable re-evaluating the "
                         "loss on the current batch); without one use 'secant' or 'auto'")
    return curvature


def _make_transport(config: Config, world: World) -> Any:
    from spikewatch.agent._transport import Transport

    return Transport(
        config.endpoint, run=config.run, rank=world.rank, world_size=world.world_size,
        spool_dir=None if config.spool_dir is None else str(config.spool_dir),
        server_public_key=config.server_key, client_secret_key=config.client_secret_key,
        client_public_key=config.client_public_key,
    )


_live: weakref.WeakSet[Monitor] = weakref.WeakSet()
_exit_registered = False


def _close_all() -> None:
    for m in list(_live):
        m.close(timeout=2.0)


def _register_exit() -> None:
    """Close monitors at interpreter exit, before the transport's own exit handler (atexit runs
    handlers in reverse order, and the transport registers when its module is imported)."""
    global _exit_registered
    if not _exit_registered:
        atexit.register(_close_all)
        _exit_registered = True


def attach(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    run: str | None = None,
    endpoint: str | None = None,
    closure: Closure | None = None,
    profile: str | None = None,
    overhead_budget: float | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    layers: Iterable[str | nn.Module] | None = None,
    logits_module: nn.Module | None = None,
    curvature: str | None = None,
    sample_fraction: float | None = None,
    ddp_ranks: str | None = None,
    server_key: str | None = None,
    client_secret_key: str | None = None,
    client_public_key: str | None = None,
    enabled: bool | None = None,
    guard: bool | Guard = False,
) -> Monitor:
    """Attach spikewatch to a model and its optimizer; returns the `Monitor`.

    Every option falls back to its SPIKEWATCH_* environment variable (SPIKEWATCH_ENDPOINT, _RUN,
    _PROFILE, _OVERHEAD_BUDGET, _SPOOL_DIR, _CURVATURE, _DDP_RANKS, _SERVER_KEY,
    _CLIENT_KEY(_FILE), _DISABLED). `closure` re-evaluates the loss on the current batch and
    returns it (without calling backward): it enables the exact (or finite-difference) λ_grad and
    λ_max; with curvature="auto" an exact HVP the model cannot double-differentiate falls back to
    finite differences; without a closure the zero-extra-pass secant estimate is used.
    `overhead_budget` is the agent's share of step time (default 0.01) that cadences are
    stretched to respect; `math.inf` never stretches. `guard=True` (or a `Guard` with its knobs)
    lets the agent act when a spike is predicted: a bounded, temporary lift of Adam's decayed
    second moment by default (`agent/_guard.py`); every action is streamed as an event. Bad
    options raise ValueError / TypeError here, before training starts; afterwards the agent
    never raises into training.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"attach(): model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError("attach(): optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    if closure is not None and not callable(closure):
        raise TypeError("attach(): closure must be callable")
    if logits_module is not None and not isinstance(logits_module, nn.Module):
        raise TypeError("attach(): logits_module must be a torch.nn.Module")
    cfg = resolve(run=run, endpoint=endpoint, profile=profile, overhead_budget=overhead_budget,
                  spool_dir=spool_dir, curvature=curvature, sample_fraction=sample_fraction,
                  ddp_ranks=ddp_ranks, enabled=enabled,
                  server_key=server_key, client_secret_key=client_secret_key,
                  client_public_key=client_public_key)
    _backend(cfg.curvature, closure)  # refuse exact/fd without a closure up front
    if layers is not None and cfg.enabled:
        select_layers(uncompiled(model), layers)
    if not isinstance(guard, bool | Guard):
        raise TypeError("attach(): guard must be True/False or a Guard, got "
                        f"{type(guard).__name__}")
    policy = Guard() if guard is True else (guard or None)
    return Monitor(model, optimizer, cfg, closure=closure, layers=layers,
                   logits_module=logits_module, guard=policy)

