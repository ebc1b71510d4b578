"""ρ = ‖g‖/‖√v̂‖ of the gradient Adam is about to apply: a runaway update met before it is made.

A spike the guard did not prevent can run away: the gradient outgrows Adam's second moment and
every coordinate steps many times lr. On the suite's β2 = 0.999 transformers the sampled ρ of
successive gradients went 0.07 → 0.5 → 1.6 → 6 → 23 in four steps. The two-secant reading
(:mod:`monitor.two_secant`) gives ρ two steps after its gradient, in batches below the edge: it
meets such a run at its peak. This reads it with no lag, at the optimizer's pre-step hook, from
the gradient in ``.grad`` and Adam's v on the same coordinate sample:

    ρ_now² = Σ w·g² / Σ w·v̂',   v̂' = (β2·v + (1 − β2)·g²)/(1 − β2^(t+1)),

v̂' the second moment the step is about to divide by (per param group), so ρ_now is the quantity
the reading would report for this gradient two steps later, with the same bound
√((1 − β2^t)/(1 − β2)) and the same thresholds.

Reading ``.grad`` costs: the gradients are new tensors at every step, and their views on the
sample must be made again (~0.3 ms on the CPU benchmark model, cold caches). So it is *armed*,
by ρ ≥ `ARM_RHO` (the gradient twice √v̂: on the suite's stable controls at most 4 % of
readings) of the gradient the last step applied, for the next `HOLD` pre-steps. That ρ is at hand
where the predictor computed at the step (every step near the edge or from ρ ≥ 2, every fourth
below, `agent._two_secant_probe`). A runaway leaves the edge as it builds (its ratio falls as
its ρ climbs, and the predictor goes back to batches), so for `WINDOW` steps after a reading
past the edge (the guard's `ratio`, 0.99) it is computed from the sample of m the predictor
recorded at the step (a few vector operations, ~0.1 ms cold: too much for every step of every
run).

Host arrays only (a CPU model in fp16/fp32/fp64): on an accelerator the decision would need the
value on the host before the step, a synchronisation, so there ρ_now is not read (None) and the
reading's ρ stands. AMSGrad (whose step divides by a running max) and SGD are not read either.
Under DDP every rank reads the same all-reduced gradient on the same sample, and the predictor
computes at the same steps on every rank (its cadence is pinned there): the same decisions.
"""

from __future__ import annotations

import math
from typing import Any

from spikewatch.monitor.two_secant import TwoSecant

__all__ = ["ARM_RHO", "HOLD", "WINDOW", "RunawayWatch"]

ARM_RHO = 2.0  # ρ of the last applied gradient from which ρ_now is read
HOLD = 10  # pre-steps read after an arming one
WINDOW = 200  # steps after a reading past the edge whose applied ρ is computed if need be


class RunawayWatch:
    """ρ_now of the gradient about to be applied, read on `est`'s sample while armed.

    Call :meth:`after_step` from the optimizer's post-step hook (after the predictor recorded the
    step) and :meth:`before_step` from the pre-step hook; the latter returns ρ_now while armed,
    else None."""

    def __init__(self, est: TwoSecant, *, arm_rho: float = ARM_RHO, hold: int = HOLD) -> None:
        self.est = est
        self.arm_rho = arm_rho
        self.hold = hold
        self.armed_until = -1  # the last pre-step (inclusive) that reads ρ_now
        self.window_until = -1  # the last step whose applied ρ is computed (after a crossing)
        self.reads = 0  # pre-steps that read it
        self._readable: tuple[Any, bool] = (None, False)  # (the estimator's arrays, readable)

    @property
    def readable(self) -> bool:
        """Whether ρ_now can be read without a host synchronisation (see the module doc); known
        once the estimator has sampled (again if it samples afresh)."""
        est = self.est
        arrays = est._arrays
        if arrays is not self._readable[0]:
            self._readable = (arrays, est.kind == "adam" and arrays is not None and arrays.host
                              and est._keys[1] == "exp_avg_sq")
        return self._readable[1]

    def crossed(self, step: int) -> None:
        """A reading at `step` was past the edge: watch every step's gradient for `WINDOW`."""
        self.window_until = step + WINDOW

    def after_step(self, step: int) -> float | None:
        """Arm the watch for the pre-steps after `step` (the index of the step just made, which
        recorded `step + 1` completed steps) if the gradient `step` applied had
        ρ ≥ `arm_rho`; that ρ (None where not known: see `applied_rho`, computed within the
        window after a crossing)."""
        if not self.readable:
            return None
        if self.est._pending and step > self.window_until:
            return None  # recorded, not computed, and no crossing lately: nothing to read
        rho = self.applied_rho(step + 1)
        if rho is not None and rho >= self.arm_rho:
            self.armed_until = step + self.hold
        return rho

    def before_step(self, step: int, optimizer: Any) -> float | None:
        """ρ_now of the gradient step `step` is about to apply, while armed; else None."""
        if step > self.armed_until or not self.readable:
            return None
        self.reads += 1
        return self.pending_rho(optimizer)

    def applied_rho(self, completed: int) -> float | None:
        """ρ of the gradient that step `completed` applied, if the predictor recorded that step.
        Where it also computed the step, its sums are at hand (no work); else Σ w·g² comes from
        the last two reads of m (g = (m_{t+1} − β1·m_t)/(1 − β1)), over the last computed Σ w·v̂
        (`after_step` asks for that only within the window after a crossing)."""
        est = self.est
        sums = est._rho  # (Σ w·g², Σ w·v̂) per group, of the last gradient computed
        if sums is None or est._k != completed:  # not recorded (a stretched predictor)
            return None
        pending = est._pending
        if not pending:  # computed at this very step
            total = sums.sum(axis=1)  # over the groups
            return _ratio(float(total[0]), float(total[1]))
        last = pending[-1]
        prev = pending[-2].reads if len(pending) >= 2 else est._reads
        if last.seen < 2 or prev is None:
            return None
        hs = est._hypers(last.hyper)
        m_new, m_old = last.reads[1], prev[1]
        if all(h.beta1 == hs[0].beta1 for h in hs):
            d = m_new - hs[0].beta1 * m_old  # (1 − β1)·g
            g2 = float(est._weights @ (d * d)) / (1.0 - hs[0].beta1) ** 2
        else:
            g = m_new * 1.0
            for h, sl in zip(hs, est._slices, strict=True):
                g[sl] = (m_new[sl] - h.beta1 * m_old[sl]) * (1.0 / (1.0 - h.beta1))
            g2 = float(est._weights @ (g * g))
        vhat = float(sums[1].sum())
        b2, t = hs[0].beta2, completed
        if all(h.beta2 == b2 for h in hs) and 0.0 < b2 < 1.0:  # add this gradient's share
            # to the Σv̂ computed len(pending) steps ago (the ones between are left out)
            n = len(pending)
            vhat = (vhat * b2 ** n * (1.0 - b2 ** (t - n)) + (1.0 - b2) * g2) / (1.0 - b2 ** t)
        return _ratio(g2, vhat)

    def pending_rho(self, optimizer: Any) -> float | None:
        """ρ_now from ``.grad`` and v on the sample (None if a sampled parameter has no dense
        gradient of its shape, or the state was replaced since the predictor last read it)."""
        est = self.est
        params, arr, sample = est._params, est._arrays, est.sample
        if arr is None or sample is None or not est._v_views:
            return None
        grads = [p.grad for p in params]
        if any(g is None or g.is_sparse or g.shape != p.shape
               for g, p in zip(grads, params, strict=True)):
            return None
        state = optimizer.state.get(params[0]) or {}
        if state.get(est._keys[0]) is not est._source:
            return None  # a checkpoint load: the predictor's views are stale
        t = float(state.get("step", 0)) + 1.0  # a CPU tensor on the host path: no sync
        g = arr.gather(arr.views(sample.views([x.detach() for x in grads if x is not None])))
        v = arr.gather(est._v_views)
        g2 = g * g
        s_g2, s_v = est._mask @ g2, est._mask @ v
        hs = est._hypers(est._hyper.read())
        vhat = sum((h.beta2 * float(s_v[j]) + (1.0 - h.beta2) * float(s_g2[j]))
                   / (1.0 - h.beta2 ** t) for j, h in enumerate(hs))
        return _ratio(float(s_g2.sum()), vhat)


def _ratio(g2: float, vhat: float) -> float | None:
    """√(Σg²/Σv̂), None where it is not a number (an empty or broken sample)."""
    if not (math.isfinite(g2) and math.isfinite(vhat)) or vhat <= 0.0:
        return None
    return math.sqrt(g2 / vhat)
