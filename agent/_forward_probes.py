"""Forward-hook probes: spectral alignment of selected layers' inputs, over-confidence of logits.

Eager models: a probe's hooks exist only at the steps it is due at, so the watched modules stay on
PyTorch's hook-free fast path in between, and each hook measures at once (`measure_now`).

torch.compile'd models (given to `attach` compiled, or compiled in place): the hooks stay for the
whole run, because compiled code honours only hooks that were in place before its first forward
and never change. Each hook first reads one switch, `HookGate.open`; TorchDynamo specialises on
that bool, so the forward compiles to two whole graphs, one for ordinary steps without any agent
work and one for due steps that also computes a few small tensors (`capture`: the cosines of the
sampled inputs against v₁ prepared at arming, the reduced over-confidence). No graph break either
way; the captures are measured at the optimizer's pre-step.

A probe whose hooks stop being called (a module that no longer runs, or a model compiled before
`attach`) is reported and switched off rather than going silently missing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from spikewatch.agent._collect import Collector
from spikewatch.agent._profiles import ALIGNMENT, LOGITS
from spikewatch.agent._untraced import untraced
from spikewatch.protocol import names as nm

ForwardHook = Callable[[nn.Module, tuple[Any, ...], Any], None]
MISSED_LIMIT = 2  # armed steps in a row with no hook call before a probe is reported


class HooksNotCalledError(RuntimeError):
    """A forward-hook probe was armed but none of its hooks ran."""


class HookGate:
    """The switch every forward hook of one monitor reads first: open while a probe is armed.
    A plain bool on purpose: Dynamo specialises on it (two graph variants, no recompiles)."""

    def __init__(self) -> None:
        self.open = False


@dataclass(frozen=True, slots=True)
class HookEnv:
    """What the forward-hook probes of one monitor share."""

    out: Collector
    on_error: Callable[[str, BaseException], None]  # report once, disable, disarm
    timer: Callable[[], float]
    spent: Callable[[str, float], None]  # (probe, seconds) into the overhead account
    gate: HookGate
    compiled: bool  # hooks stay registered for the run; due steps capture in the graph


class Armed:
    """A probe measured from forward hooks at the steps it is armed for, once per module."""

    name: str = ""

    def __init__(self, env: HookEnv) -> None:
        self.env = env
        self.armed_step: int | None = None
        self.missed = 0  # armed steps in a row at which no hook ran
        self.handles: list[Any] = []
        self._targets: list[tuple[nn.Module, ForwardHook]] = []
        self._done: set[str] = set()  # keys of the modules measured at the armed step
        self._captured: dict[str, tuple[nn.Module, Any]] = {}  # compiled forwards: key -> capture
        self.traced = env.compiled  # captures come from compiled graphs: prepare at arming

    # --- what a probe defines ---------------------------------------------------------------
    def measure_now(self, key: str, module: nn.Module, inputs: tuple[Any, ...], output: Any,
                    step: int) -> None:
        """Eager forward: measure into the collector (device work only, never a sync)."""
        raise NotImplementedError

    def capture(self, key: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        """Compiled forward: the small tensors `measure` needs (traced into the graph), or None
        when there is nothing to measure."""
        raise NotImplementedError

    def measure(self, key: str, module: nn.Module, captured: Any, step: int) -> None:
        """A capture of a compiled forward into the collector, at the pre-step."""
        raise NotImplementedError

    def prepare(self, step: int) -> None:
        """Compiled forwards, at arming: eager work the captures of `step` rely on."""

    def finish(self, step: int) -> None:
        """Work left once every measurement of `step` is made (default: none)."""

    # --- hooks ------------------------------------------------------------------------------
    def watch(self, module: nn.Module, key: str) -> None:
        """Measure `module` once per armed step under `key` (eager: its first forward of the
        step; compiled: its last)."""
        gate, captured = self.env.gate, self._captured
        eager = untraced(self._eager(key))

        def hook(m: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not gate.open:
                return
            if torch.compiler.is_compiling():  # Dynamo keeps this branch only, in the graph
                captured[key] = (m, self.capture(key, m, inputs, output))  # last forward wins
            else:
                eager(m, inputs, output)

        self._targets.append((module, hook))
        if self.env.compiled:
            self.handles.append(module.register_forward_hook(hook))

    def _eager(self, key: str) -> ForwardHook:
        def measure_now(m: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            step = self.armed_step
            if step is not None and key not in self._done:
                self._done.add(key)
                self._timed(self.measure_now, key, m, inputs, output, step)
        return measure_now

    def _timed(self, fn: Callable[..., None], *args: Any) -> None:
        env = self.env
        t0 = env.timer()
        try:
            fn(*args)
        except Exception as e:
            env.on_error(self.name, e)
        finally:
            env.spent(self.name, env.timer() - t0)

    def arm(self, step: int | None) -> None:
        """Arm for `step` or disarm (None); on an eager model this adds or removes the hooks."""
        self.armed_step = step
        self._done.clear()
        self._captured.clear()
        if step is not None and self.traced:
            self._timed(self.prepare, step)
        if self.env.compiled:
            return
        if step is None:
            self._unhook()
        elif not self.handles:
            self.handles = [m.register_forward_hook(h) for m, h in self._targets]

    def settle(self, step: int) -> None:
        """At the pre-step of `step`: measure what compiled forwards captured, end the step."""
        if self.armed_step != step:
            return
        for key, (module, value) in self._captured.items():
            if value is not None:
                self._done.add(key)
                self._timed(self.measure, key, module, value, step)
        if self._captured:
            # compiled after attach() (given the plain module): prepare from the next arming on
            self.traced = True
            self._captured.clear()
        if self._done:
            self.missed = 0
            self.finish(step)
        else:
            self.missed += 1
        self.armed_step = None
        if self.missed == MISSED_LIMIT:
            modules = ", ".join(sorted({type(m).__name__ for m, _ in self._targets}))
            self.env.on_error(self.name, HooksNotCalledError(
                f"forward hooks on {modules} were not called at {MISSED_LIMIT} armed steps in a "
                "row: the module did not run, or torch.compile compiled it without them (give "
                "attach() the compiled module, before its first forward)"))

    def _unhook(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def remove(self) -> None:
        self._unhook()
        self._targets.clear()


class AlignmentProbe(Armed):
    """Spectral alignment of the inputs of selected nn.Linear layers, on due steps only.

    Eager: v₁ is refreshed from the weight inside the hook (the weight as the forward sees it,
    e.g. gathered by FSDP). Compiled: refreshed at arming into a fixed buffer the graph reads.
    """

    name = ALIGNMENT

    def __init__(self, layers: Sequence[tuple[str, nn.Module]], env: HookEnv) -> None:
        super().__init__(env)
        from spikewatch.monitor.spectral_alignment import SpectralAlignment, declared_linear_weight

        self._weight = declared_linear_weight
        self._trackers: dict[str, SpectralAlignment] = {}
        self._modules: dict[str, nn.Module] = {}
        self._v1: dict[str, Tensor] = {}  # compiled: v₁ per layer, updated in place
        self._sigma: dict[str, Tensor] = {}
        self._div: list[Tensor] = []
        for name, mod in layers:
            declared_linear_weight(mod)  # refuse a layer without an out×in weight up front
            self._trackers[name] = SpectralAlignment()
            self._modules[name] = mod
            self.watch(mod, name)

    def measure_now(self, key: str, module: nn.Module, inputs: tuple[Any, ...], output: Any,
                    step: int) -> None:
        x = inputs[0] if inputs else None
        if isinstance(x, Tensor):
            with torch.no_grad():
                self._report(key, self._trackers[key].update(self._weight(module), x), step)

    def prepare(self, step: int) -> None:
        with torch.no_grad():
            for key, module in self._modules.items():
                v1, self._sigma[key] = self._trackers[key].refresh(self._weight(module))
                if key in self._v1 and self._v1[key].shape == v1.shape:
                    self._v1[key].copy_(v1)
                else:
                    self._v1[key] = v1.clone()

    def capture(self, key: str, module: nn.Module, inputs: tuple[Any, ...],
                output: Any) -> Tensor | None:
        x = inputs[0] if inputs else None
        v1 = self._v1.get(key)
        if not isinstance(x, Tensor) or v1 is None:
            return None  # compiled without attach() knowing: v₁ is prepared from the next arming
        with torch.no_grad():
            return self._trackers[key].cosines(x, v1)

    def measure(self, key: str, module: nn.Module, captured: Tensor, step: int) -> None:
        self._report(key, self._trackers[key].summarise(captured, self._sigma[key]), step)

    def _report(self, key: str, r: Any, step: int) -> None:
        out = self.env.out
        out.layer(step, nm.SA_MEAN, key, r.mean)
        out.layer(step, nm.SA_SIGN_DIVERSITY, key, r.sign_diversity)
        out.hist(step, nm.SA_HIST, key, r.hist, -1.0, 1.0, r.nonfinite)
        self._div.append(r.sign_diversity)

    def arm(self, step: int | None) -> None:
        self._div = []
        super().arm(step)

    def finish(self, step: int) -> None:
        """The min sign diversity over the layers measured at `step`."""
        if self._div:
            dev = self._div[0].device
            low = torch.stack([d.to(dev) for d in self._div])
            low = torch.where(torch.isnan(low), torch.full_like(low, math.inf), low).min()
            low = torch.where(torch.isinf(low), torch.full_like(low, math.nan), low)
            self.env.out.scalar(step, nm.SA_SIGN_DIVERSITY, low)
            self._div = []


def over_confidence(step: int, logits: Tensor, out: Collector) -> None:
    """Over-confidence proxies of a logits tensor (..., classes) into the collector."""
    from spikewatch.monitor.overconfidence import overconfidence

    with torch.no_grad():
        _report_overconfidence(step, overconfidence(logits), out)


def _report_overconfidence(step: int, r: Any, out: Collector) -> None:
    out.scalar(step, nm.MAX_PROB, r.max_prob)
    out.scalar(step, nm.ENTROPY, r.entropy)
    out.scalar(step, nm.PROB_IMPURITY, r.impurity)
    out.scalar(step, nm.LOGIT_NORM, r.logit_norm)


def logits_of(output: Any) -> Tensor | None:
    """The logits in a module's output: a tensor, `.logits` (Hugging Face) or the first tensor."""
    if isinstance(output, Tensor):
        return output
    lg = getattr(output, "logits", None)
    if isinstance(lg, Tensor):
        return lg
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


class LogitsProbe(Armed):
    """Over-confidence from a forward hook on the module that outputs the logits.

    A compiled forward captures the reduced over-confidence (four 0-d tensors), never the logits,
    which would otherwise stay alive through the backward pass.
    """

    name = LOGITS

    def __init__(self, module: nn.Module, env: HookEnv) -> None:
        super().__init__(env)
        self.watch(module, LOGITS)

    def measure_now(self, key: str, module: nn.Module, inputs: tuple[Any, ...], output: Any,
                    step: int) -> None:
        lg = logits_of(output)
        if lg is not None:
            over_confidence(step, lg, self.env.out)

    def capture(self, key: str, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        from spikewatch.monitor.overconfidence import overconfidence

        lg = logits_of(output)
        if lg is None:
            return None
        with torch.no_grad():
            return overconfidence(lg)

    def measure(self, key: str, module: nn.Module, captured: Any, step: int) -> None:
        _report_overconfidence(step, captured, self.env.out)
