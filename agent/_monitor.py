"""The `Monitor`: wires a live model's and optimizer's hooks to the probes, the plan and the drain.

The training loop stays unchanged. The optimizer's pre-step hook (or, when `step(closure)` is used,
the moment the closure returns) runs the gradient/state probes due at the step (`agent._plan`);
the post-step hook runs the post-step parts, advances the step, lets the guard act, and on the
drain cadence hands everything pending to `agent._drain` (one host transfer, the reactive
detectors, the transport, which never blocks). Any exception inside the agent is caught: a
failing probe is disabled and reported as a PROBE_ERROR event. `attach()` (in `agent._attach`)
checks the user's options and builds it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from spikewatch.agent._collect import Collector
from spikewatch.agent._config import Config
from spikewatch.agent._distributed import World, detect, local_optimizer
from spikewatch.agent._drain import Drain, Reactive
from spikewatch.agent._forward_probes import Armed, HookEnv, HookGate, over_confidence
from spikewatch.agent._guard import Guard
from spikewatch.agent._guard_hooks import GuardHooks
from spikewatch.agent._layers import is_compiled, uncompiled
from spikewatch.agent._lifecycle import (
    NullTransport,
    close_at_exit,
    forget,
    make_transport,
    resumed_step,
    run_meta,
)
from spikewatch.agent._plan import StepPlan
from spikewatch.agent._probe_base import Closure, Ctx, Probe, curvature_backend, layer_name
from spikewatch.agent._probe_set import build_probes
from spikewatch.agent._profiles import HPARAMS, LOGITS, PROFILES, RUNAWAY_WATCH, TWO_SECANT
from spikewatch.agent._scheduler import HEADROOM, UNTIMED, Clock, Report, Scheduler
from spikewatch.agent._trackers import Tracker, Trackers
from spikewatch.agent._two_secant_probe import TwoSecantProbe
from spikewatch.agent._untraced import untraced
from spikewatch.protocol import names as nm
from spikewatch.protocol import wire
from spikewatch.protocol.names import EventType

__all__ = ["Monitor"]

log = logging.getLogger("spikewatch.agent")
_ERR_LEN = 300


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
        trackers: Sequence[Tracker] = (),
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
            self.transport: Any = NullTransport()
            return
        local = local_optimizer(optimizer)
        self.step = resumed_step(local)
        self.resumed_at = self.step
        self._stepped_since_log = False
        self._gate = HookGate()  # open while a forward-hook probe is armed
        self.scheduler = Scheduler(PROFILES[config.profile], config.overhead_budget,
                                   **({"clock": clock} if clock is not None else {}),
                                   stretch=not self.world.sharded, untimed=UNTIMED,
                                   headroom=HEADROOM, bursts={TWO_SECANT: TwoSecantProbe.burst},
                                   pin_predictor=watching and self.world.world_size > 1)
        self.out = Collector()
        names: dict[Tensor, str] = {p: layer_name(n, "param")
                                    for n, p in model.named_parameters()}
        self.ctx = Ctx(model, local, names, self.world, closure,
                       curvature_backend(config.curvature, closure),
                       auto=config.curvature == "auto")
        self._reactive = Reactive()
        if (guard is not None and watching and self.world.world_size > 1
                and (guard.rise > 1.0 or guard.swings > 0)):
            log.info("spikewatch guard: under DDP it acts on the shared ratio and rho alone "
                     "(rise and the eval_loss swings read each rank's own losses, which differ "
                     "between ranks)")
            guard = guard.model_copy(update={"rise": 1.0, "swings": 0})
        self._guard = (GuardHooks(guard, clock=self.scheduler.now)
                       if guard is not None and watching else None)
        if guard is not None and not watching:
            log.warning("spikewatch guard: off under a sharded optimizer (each rank holds part "
                        "of the reading)")
        built = build_probes(
            self.ctx, self.scheduler, sample_fraction=config.sample_fraction,
            env=HookEnv(self.out, self._fail_armed, self.scheduler.now, self.scheduler.add,
                        self._gate, compiled=compiled),
            layers=layers, logits_module=logits_module, fail=self._fail,
            event=functools.partial(self._event, self.step))
        self._probes, self._hparams, self._armed = built.probes, built.hparams, built.armed
        self._steps = StepPlan(self.scheduler, self._probes, self._armed, self._disabled,
                               self._gate)
        self.transport = (NullTransport() if quiet else transport if transport is not None
                          else make_transport(config, self.world))
        self._trackers = Trackers(() if quiet else trackers,
                                  report=lambda e: self.out.event(self.step, e))
        self._sender = Drain(self.out, self.scheduler, self.ctx, self.transport, self._reactive,
                             self._guard, config.overhead_budget, failed=self._reported,
                             trackers=self._trackers)
        self.transport.hello(run_meta(model, optimizer, local, config, self.world,
                                      curvature=self.ctx.curvature, closure=closure is not None,
                                      resumed_at=self.resumed_at))
        if self.resumed_at > 0:
            self._event(self.step, EventType.RESUMED, resumed_at_step=self.resumed_at)
        self._handles.append(optimizer.register_step_pre_hook(self._pre_hook))
        self._handles.append(optimizer.register_step_post_hook(self._post_hook))
        self._plan(self.step)
        close_at_exit(self)

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
        """Drain what is pending, remove the hooks, flush the trackers and close the transport
        within ~`timeout` s."""
        if self._closed:
            return
        self._closed = True
        forget(self)
        for h in self._handles:
            h.remove()
        for a in self._armed:
            a.remove()
        if self.enabled:
            try:
                if self.ctx.predictor is not None:  # the readings of a batch not yet computed
                    self.ctx.predictor.settle(self.out)
                self._drain()
            except Exception as e:  # never let close() raise into the training script
                log.warning("spikewatch: final drain failed: %s", e)
            self._trackers.close()  # flushed; closed only where spikewatch created them
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

    @property
    def last_report(self) -> Report | None:
        """The scheduler's last overhead measurement (None before the first drain)."""
        return self._sender.last_report if self.enabled else None

    @property
    def firing(self) -> dict[str, wire.Alert]:
        """The server's alerts on this run firing as of the last drain, by rule name (the server
        tells each agent of its run's alerts; empty without a server or before any)."""
        return dict(self._sender.firing) if self.enabled else {}

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

    def _run_followed(self, phase: str, step: int) -> float:
        """Run the off-cadence follow-ups due now (`StepPlan.run_followed`); the seconds spent."""
        return self._steps.run_followed(
            phase, step, lambda p: self._run(p, phase, step, due=False))

    def _run_hparams(self, phase: Callable[[int, Collector], None], step: int) -> None:
        """One half of the every-step hyper-parameter probe, timed with its hook (it is part of
        the fixed per-step cost); disabled at its first failure."""
        try:
            phase(step, self.out)
        except Exception as e:
            self._hparams = None
            self._fail(HPARAMS, e)

    def _charge_watch(self) -> float:
        """Charge the guard's runaway watch to its own account (reported, not budgeted: see
        `GuardHooks.take_watch_seconds`); its seconds."""
        guard = self._guard
        if guard is None or not guard.watch_seconds:
            return 0.0
        seconds = guard.take_watch_seconds()
        self.scheduler.add(RUNAWAY_WATCH, seconds)
        return seconds

    def _plan(self, step: int) -> None:
        """Plan `step`: its due probes and armed forward hooks (`agent._plan`)."""
        self._steps.plan(step)

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
                self._guard.before(step, self.ctx.optimizer, self.ctx.changes,
                                   self.ctx.predictor)
                spent += self._charge_watch()
            off = self._disabled
            for p in self._steps.due:
                if p.name not in off and p.has_pre:
                    spent += self._run(p, "pre", step)
            spent += self._run_followed("pre", step)
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
            self.ctx.drain_due = sched.drain_due(step) or self.out.full
            off = self._disabled
            for p in self._steps.due:
                if p.name not in off and p.has_post:
                    spent += self._run(p, "post", step)
            spent += self._run_followed("post", step)
            self._steps.take_follow_ups()
            self.ctx.clear()
        except Exception as e:
            self._fail("agent", e, disable=False)
        if self._guard is not None:  # the probes read the lr the update used; then it goes back,
            try:  # whatever happened above
                self._guard.after(step, self.ctx.optimizer, self.ctx.predictor,
                                  self._reactive.instability.rise, self._event,
                                  self._reactive.swings, self._reactive.spiked_at)
            except Exception as e:
                self._fail("guard", e, disable=False)
            spent += self._charge_watch()
        if self._hparams is not None:  # after the guard: the lr it records is the user's
            self._run_hparams(self._hparams.post, step)
        self.step = step + 1
        self._stepped_since_log = True
        sched.add(None, sched.now() - t0 - spent)
        sched.step_end(self._steps.in_graph)
        t1 = sched.now()
        try:
            urgent = self._sender.urgent(step)
            if urgent:  # a page may be due before the next drain: send it now
                self._drain(upto=None if urgent == "hparams" else step - 1, window=False)
            elif self.ctx.drain_due or self.out.full:  # full read again: the probes added to it
                # the loss of this step is usually logged after step(): leave its record open
                self._drain(upto=step - 1)
        except Exception as e:
            self._fail("drain", e, disable=False)
        try:
            self._plan(step + 1)
        except Exception as e:
            self._steps.clear()
            self._fail("agent", e, disable=False)
        sched.add(None, sched.now() - t1)

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
        """Send what was collected up to `upto` (`agent._drain`)."""
        self._sender.drain(max(self.step - 1, 0), upto, window=window)


def _value(v: Any, what: str) -> Tensor | float:
    if isinstance(v, Tensor):
        if v.numel() != 1:
            raise ValueError(f"log(): {what} must be a scalar, got shape {tuple(v.shape)}")
        return v
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"log(): {what} must be a number or a 0-d tensor, got {type(v).__name__}")
    return float(v)
