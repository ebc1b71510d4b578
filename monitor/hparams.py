"""Hyper-parameter discontinuities between steps (lr, betas/momentum, eps, weight decay).

Call `after_step(optimizer)` from a post-step hook and `before_step(optimizer, step)` from the next
pre-step hook; `before_step` returns the events for changes made in between (by a scheduler or by
hand). Supports Adam/AdamW (and subclasses) and SGD, per parameter group.

Discontinuity, not change: smooth schedules move lr every step. A value is reported when it moved
by more than `rel_tol` of itself in one step *and* that move departs from the previous step's move
by more than the same amount (|Δ_t| and |Δ_t − Δ_{t−1}| > rel_tol·max|x|; for betas/momentum
x = 1 − β). Cosine decay and the corner between warm-up and decay stay silent, a linear ramp is
reported once where it starts (no trend known yet: the previous move counts as 0), a StepLR drop
or a hand-set β1 is reported at the step it takes effect.

Momentum jumps (seed 002). Whether the buffer was rescaled is tested by comparing the norm of the
momentum buffers (Adam exp_avg, SGD momentum_buffer; the `sample_tensors` smallest per group)
recorded after step t−1 with the norm at the pre-step hook of step t: nothing else touches them in
between, so the ratio is exactly the factor the user applied (1 when untouched). `rescaled` is
True when it matches the seed note's factor (1−β_old)/(1−β_new) within `rescale_tol` (relative).
Checked against the math rather than the note: that factor is right for SGD's summing buffer
(buf ← μ·buf + (1−d)·g, steady state ∝ 1/(1−μ)), so it is the advised factor there; Adam's exp_avg
is an average (m ← β1·m + (1−β1)·g, steady state ≈ E[g] for any β1), so the advised factor for
Adam is 1 and rescaling by the note's factor would multiply the next updates by it.

With `adam_buffer_norms=False` (the agent's choice: it runs every step) no kernel is launched for
Adam: the buffers' identity and version counters (`Tensor._version`, bumped by every in-place
write) tell whether they were touched; untouched gives the exact ratio 1, touched gives
`rescaled` and `needs_rescale` True (Adam's advised factor is 1) with `buffer_ratio` None. SGD's
buffers are always measured, because its advice depends on the factor.

Stability threshold at the step of the change (DESIGN.md): Adam's is 2/(η·c_t) on D⁻¹H, i.e.
2(1+β1)(1−β1^t)/((1−β1)η) → 2(1+β1)/((1−β1)η) for large t, so *lowering* β1 (or raising η) lowers
it at once; SGD-momentum's is 2(1+μ)/((1−d)η) on H (None for Nesterov). Events carry the threshold
before and after and `ratio_factor`, the factor by which the stability ratio r = λ/threshold changes
at that step (and r itself before/after when the caller passes the last measured r, with
`unstable_after`: r·ratio_factor ≥ 1, the change alone takes the run past the edge).

Host synchronisation: `after_step` launches at most one small reduction per group; `before_step`
reads hyper-parameters (Python numbers unless a group holds tensor hyper-parameters) and syncs
once, only when a momentum jump needs the buffer ratio.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from spikewatch.monitor._reduce import fits_f32, norms_f32
from spikewatch.monitor.adam_state import UnsupportedOptimizer, adam_view, c_t
from spikewatch.protocol.names import EventType

__all__ = ["GROUP_KEYS", "HparamEvent", "HparamWatch", "raw_groups", "stability_threshold"]

EventValue = float | int | str | bool | None
_NAMES = ("lr", "beta1", "beta2", "eps", "weight_decay", "dampening")  # per group, as numbers
GROUP_KEYS = ("lr", "betas", "eps", "weight_decay", "momentum", "dampening")
"""The param-group entries the hyper-parameter readers compare from step to step (lr first)."""


def raw_groups(groups: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Each group's `GROUP_KEYS` entries as they are (one tuple per group): comparing two such
    lists is the cheap check that nothing moved."""
    return [tuple(map(g.get, GROUP_KEYS)) for g in groups]


@dataclass(frozen=True, slots=True)
class HparamEvent:
    """A discrete event at `step` (the agent turns it into a wire Event)."""

    type: EventType
    step: int
    data: dict[str, EventValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Group:
    kind: str  # "adam" | "sgd"
    values: dict[str, float]  # lr, beta1 (β1 or μ), beta2, eps, weight_decay, dampening
    nesterov: bool
    buf_sq: Tensor | None  # Σ‖buffer‖² over the sampled tensors (device), None if not measured
    stamp: tuple[tuple[int, int], ...] | None  # (id, version) of the sampled buffers; None:
    # inference tensors, which keep no version counter


def stability_threshold(
    kind: str,
    lr: float,
    beta1: float,
    step: int = 0,
    dampening: float = 0.0,
    nesterov: bool = False,
) -> float | None:
    """Curvature threshold of the update rule: Adam 2/(η·c_t) (large-t form when step < 1),
    SGD 2(1+μ)/((1−d)η); None where undefined (η = 0, Nesterov)."""
    if lr <= 0.0:
        return None
    if kind == "adam":
        scale = c_t(beta1, step) if step >= 1 else (1.0 - beta1) / (1.0 + beta1)
        return 2.0 / (lr * scale)
    if nesterov or dampening >= 1.0:
        return None
    return 2.0 * (1.0 + beta1) / ((1.0 - dampening) * lr)


def _num(x: Any) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


class HparamWatch:
    """Detects hyper-parameter discontinuities per parameter group across step boundaries."""

    def __init__(self, rel_tol: float = 0.01, rescale_tol: float = 0.05,
                 sample_tensors: int = 4, *, adam_buffer_norms: bool = True) -> None:
        if rel_tol <= 0 or rescale_tol <= 0 or sample_tensors < 1:
            raise ValueError("rel_tol, rescale_tol > 0 and sample_tensors >= 1 required")
        self.rel_tol = rel_tol
        self.rescale_tol = rescale_tol
        self.sample_tensors = sample_tensors
        self.adam_buffer_norms = adam_buffer_norms
        self._last: list[_Group] | None = None
        # (values, nesterov) per group as the last after_step or restamp read them
        self._values: list[tuple[dict[str, float], bool]] | None = None
        self._delta: dict[tuple[int, str], float] = {}
        # per group (by id): (its params list, its length, the sampled params)
        self._sample: dict[int, tuple[list[Tensor], int, list[Tensor]]] = {}
        # buffer stamps of the last `restamp`, newer than those in `_last`
        self._stamps: list[tuple[tuple[int, int], ...] | None] | None = None
        self._src: tuple[object, list[list[Tensor]]] | None = None  # state, sampled buffers
        self._restampable = False  # `restamp` may stand in for `after_step` (version stamps)

    # --- hooks ---------------------------------------------------------------------------------
    def after_step(self, optimizer: object) -> None:
        """Record hyper-parameters and momentum-buffer norms as step t−1 left them."""
        self._last = last = self._read(optimizer, with_buffers=True)
        self._values = [(g.values, g.nesterov) for g in last]
        self._stamps = None
        self._restampable = self._src is not None and all(
            g.buf_sq is None and g.stamp is not None for g in last) and all(self._src[1])

    def restamp(self, optimizer: Any, *, reread: bool = True, lrs: list[float] | None = None
                ) -> None:
        """`after_step` for a step with nothing to report: the hyper-parameters are read as plain
        numbers (`reread=False`: the caller knows they did not change since the last call;
        `lrs`: only the groups' lr did, to these values) and only the version stamps of the
        buffers sampled by the last `after_step` are read again (an lr schedule takes this path
        at every step). Falls back to `after_step` where buffers are measured by their norm
        (SGD, `adam_buffer_norms`, no version counter), a group had no buffer yet, or the groups
        or the state dict changed (a load_state_dict; a buffer swapped inside the state shows as
        touched at the next jump, which it was, and the `after_step` of that jump samples
        afresh)."""
        src = self._src
        if (not self._restampable or src is None or src[0] is not optimizer.state
                or len(src[1]) != len(optimizer.param_groups)):
            self.after_step(optimizer)
            return
        stamps = [_stamp(bufs) for bufs in src[1]]
        if None in stamps:  # inference tensors keep no version counter
            self.after_step(optimizer)
            return
        last = self._values
        if lrs is not None and last is not None and len(lrs) == len(last):
            self._values = [({**v, "lr": float(lr)}, n) for (v, n), lr in zip(last, lrs,
                                                                               strict=True)]
        elif reread or last is None:
            kind = _kind(optimizer)
            self._values = [_values(g, kind) for g in optimizer.param_groups]
        self._stamps = stamps

    def before_step(
        self, optimizer: object, step: int,
        last_ratio: float | Callable[[], float | None] | None = None,
    ) -> list[HparamEvent]:
        """Events for changes since `after_step`. `last_ratio` is the last measured r, or a
        callable giving it, called only at a step with a change (it may read a device value).
        The hyper-parameters are read as plain numbers; the buffers only at a change."""
        kind = _kind(optimizer)
        values = [_values(g, kind) for g in _groups(optimizer)]
        last, last_values = self._last, self._values
        if last is None or last_values is None or len(last_values) != len(values):
            self._delta.clear()
            return []
        changes = [self._discontinuities(gi, old[0], new[0])
                   for gi, (old, new) in enumerate(zip(last_values, values, strict=True))]
        if not any(changes):
            return []
        now = self._read(optimizer, with_buffers=False)
        events: list[HparamEvent] = []
        ratio_now: list[float | None] = []  # last_ratio, read at most once
        for gi, changed in enumerate(changes):
            if not changed:
                continue
            new = now[gi]
            old = dataclasses.replace(
                last[gi], values=last_values[gi][0], nesterov=last_values[gi][1],
                stamp=last[gi].stamp if self._stamps is None else self._stamps[gi])
            if not ratio_now:
                ratio_now.append(last_ratio() if callable(last_ratio) else last_ratio)
            r = ratio_now[0]
            t = self._adam_step(optimizer, gi) if new.kind == "adam" else 0
            before = stability_threshold(old.kind, old.values["lr"], old.values["beta1"], t,
                                         old.values["dampening"], old.nesterov)
            after = stability_threshold(new.kind, new.values["lr"], new.values["beta1"], t,
                                        new.values["dampening"], new.nesterov)
            factor = before / after if before is not None and after is not None else None
            r_after = r * factor if r is not None and factor is not None else None
            common: dict[str, EventValue] = {
                "group": gi,
                "threshold_before": before,
                "threshold_after": after,
                "ratio_factor": factor,
                "stability_ratio_before": r,
                "stability_ratio_after": r_after,
                # the change itself takes the run past the edge of stability (a page)
                "unstable_after": None if r_after is None else bool(r_after >= 1.0),
            }
            for name in changed:
                data = dict(common, hparam=name, old=old.values[name], new=new.values[name])
                events.append(HparamEvent(EventType.HPARAM_CHANGE, step, data))
            if "beta1" in changed and (old.values["beta1"] > 0 or new.values["beta1"] > 0):
                events.append(self._momentum_event(optimizer, gi, step, old, new, common))
        return events

    def lr_moved_smoothly(self, lrs: list[float]) -> bool:
        """`before_step` for a caller that saw only the groups' lr move since the last step (an
        lr schedule): True, with the watch's memory updated as `before_step` would, where no lr
        moved by more than `rel_tol` (so no event is possible); False where `before_step` must
        run instead."""
        last = self._values
        if last is None or len(last) != len(lrs):
            return False
        moves = []
        for (values, _), lr in zip(last, lrs, strict=True):
            old = values["lr"]
            move = lr - old
            if abs(move) > self.rel_tol * max(abs(old), abs(lr)):
                return False
            moves.append(move)
        for gi, move in enumerate(moves):
            for name in _NAMES:
                self._delta[(gi, name)] = move if name == "lr" else 0.0
        return True

    # --- internals -----------------------------------------------------------------------------
    def _read(self, optimizer: object, *, with_buffers: bool) -> list[_Group]:
        kind = _kind(optimizer)
        groups: list[_Group] = []
        sampled: list[list[Tensor]] = []
        for group in _groups(optimizer):
            vals, nesterov = _values(group, kind)
            bufs = self._buffers(optimizer, group, kind)
            sampled.append(bufs)
            stamp = _stamp(bufs)
            measure = with_buffers and (kind == "sgd" or self.adam_buffer_norms or stamp is None)
            buf = _sum_sq(bufs) if measure and bufs else None
            groups.append(_Group(kind, vals, nesterov, buf, stamp))
        self._src = (cast(torch.optim.Optimizer, optimizer).state, sampled)
        return groups

    def _buffers(self, optimizer: Any, group: dict[str, Any], kind: str) -> list[Tensor]:
        """The `sample_tensors` smallest momentum buffers of the group: a user's rescale applies
        to all of them alike, and small ones keep the per-step cost to a few tiny kernels. The
        choice is cached per group and redone when the state changes."""
        key = "exp_avg" if kind == "adam" else "momentum_buffer"
        params: list[Tensor] = group["params"]
        state = optimizer.state
        cached = self._sample.get(id(group))
        if cached is not None and cached[0] is params and cached[1] == len(params):
            bufs = [b for p in cached[2] if isinstance(b := state.get(p, {}).get(key), Tensor)]
            if len(bufs) == len(cached[2]):
                return bufs
        found = [(b.numel(), i, p) for i, p in enumerate(params)
                 if isinstance(b := state.get(p, {}).get(key), Tensor)]
        if not found:
            self._sample.pop(id(group), None)
            return []
        chosen = [p for _, _, p in sorted(found, key=lambda f: f[:2])[:self.sample_tensors]]
        self._sample[id(group)] = (params, len(params), chosen)
        return [state[p][key] for p in chosen]

    def _discontinuities(self, gi: int, old: dict[str, float], new: dict[str, float]
                         ) -> list[str]:
        changed: list[str] = []
        for name in _NAMES:
            a, b = old[name], new[name]
            if name in ("beta1", "beta2"):
                a, b = 1.0 - a, 1.0 - b
            delta = b - a
            prev = self._delta.get((gi, name), 0.0)
            self._delta[(gi, name)] = delta
            scale = max(abs(a), abs(b))
            tol = self.rel_tol * scale
            if delta != 0.0 and (scale == 0.0 or (abs(delta) > tol and abs(delta - prev) > tol)):
                changed.append(name)
        return changed

    def _adam_step(self, optimizer: object, gi: int) -> int:
        steps = [v.step for v in adam_view(optimizer) if v.group_index == gi]
        return max(steps, default=0) + 1

    def _momentum_event(self, optimizer: Any, gi: int, step: int, old: _Group, new: _Group,
                        common: dict[str, EventValue]) -> HparamEvent:
        b_old, b_new = old.values["beta1"], new.values["beta1"]
        note = (1.0 - b_old) / (1.0 - b_new) if b_new < 1.0 else math.inf
        advised = note if new.kind == "sgd" else 1.0
        ratio: float | None = None
        touched = bool(old.stamp) and old.stamp != new.stamp
        if old.buf_sq is not None:
            bufs = self._buffers(optimizer, optimizer.param_groups[gi], new.kind)
            if bufs:
                pair = torch.stack((_sum_sq(bufs), old.buf_sq)).tolist()  # the one sync, on a jump
                ratio = math.sqrt(pair[0] / pair[1]) if pair[1] > 0 else None
        elif old.stamp and not touched:
            ratio = 1.0  # the buffers' version counters did not move: nothing rescaled them
        if ratio is not None:
            rescaled = abs(ratio - note) <= self.rescale_tol * abs(note)
            needs = abs(ratio - advised) > self.rescale_tol * advised
        else:  # touched, not measured (Adam, advised 1): any rescale is one too many
            rescaled = needs = touched
        data = dict(common, hparam="beta1", old=b_old, new=b_new, buffer_ratio=ratio,
                    rescaled=rescaled, note_factor=note, advised_factor=advised,
                    needs_rescale=needs)
        return HparamEvent(EventType.MOMENTUM_JUMP, step, data)


def _kind(optimizer: object) -> str:
    if isinstance(optimizer, torch.optim.Adam):
        return "adam"
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    raise UnsupportedOptimizer(
        f"hyper-parameter watch supports Adam/AdamW and SGD, not {type(optimizer).__name__}")


def _groups(optimizer: object) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = cast(torch.optim.Optimizer, optimizer).param_groups
    return groups


def _values(group: dict[str, Any], kind: str) -> tuple[dict[str, float], bool]:
    """A group's hyper-parameters as plain numbers (lr, beta1 = β1 or μ, beta2, eps,
    weight_decay, dampening) and its Nesterov flag."""
    if kind == "adam":
        b1, b2 = group["betas"]
        vals = {"beta1": _num(b1), "beta2": _num(b2), "eps": _num(group["eps"]),
                "dampening": 0.0}
    else:
        vals = {"beta1": _num(group.get("momentum", 0.0)), "beta2": 0.0, "eps": 0.0,
                "dampening": _num(group.get("dampening", 0.0))}
    vals["lr"] = _num(group["lr"])
    vals["weight_decay"] = _num(group.get("weight_decay", 0.0))
    return vals, bool(group.get("nesterov", False))


def _stamp(bufs: list[Tensor]) -> tuple[tuple[int, int], ...] | None:
    try:
        return tuple((id(b), b._version) for b in bufs)
    except RuntimeError:  # inference tensors keep no version counter
        return None


def _sum_sq(bufs: list[Tensor]) -> Tensor:
    """Σ‖b‖² in float32 over the buffers (one kernel for one tensor), whatever their dtype:
    float32 accumulation for float32 and narrower, float64 buffers in float64, then cast."""
    if len(bufs) == 1:
        b = bufs[0]
        one: Tensor = (torch.linalg.vector_norm(b, dtype=torch.float32) if fits_f32(b.dtype)
                       else torch.linalg.vector_norm(b).float())
        return one.square()
    return torch.stack(norms_f32(bufs, 2)).square().sum()
