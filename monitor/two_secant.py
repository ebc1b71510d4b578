"""Curvature along Adam's preconditioned gradient with no extra pass ("two-secant"), every step.

The exact λ_grad (arXiv:2506.04805) needs a Hessian-vector product: about two backward passes.
Adam's momentum makes it unnecessary. Index gradients by the steps completed before them: g^i is
computed at θ^i, and optimizer step i+1 uses it to move θ^i → θ^{i+1}:

    m_{i+1} = β1·m_i + (1−β1)·g^i,    Δθ_i = θ^{i+1} − θ^i = −(η_{i+1}/b1_{i+1})·D⁻¹m_{i+1}

(b1_j = 1 − β1^j, D = √v̂ + ε). With D moving by ≈ √β2 per step,

    D⁻¹g^i = (D⁻¹m_{i+1} − β1·D⁻¹m_i)/(1−β1) = a·Δθ_i + b·Δθ_{i−1} =: d,
    a = −(b1_{i+1}/η_{i+1})/(1−β1),  b = β1·(b1_i/η_i)/(1−β1),

and as the Hessian is linear, H·d = a·(g^{i+1} − g^i) + b·(g^i − g^{i−1}): its action on the
preconditioned gradient is a combination of two consecutive gradient differences. The Rayleigh
quotient of the symmetric S = c·D^{−1/2}HD^{−1/2} along D^{1/2}d,

    λ_2s = c_{i+1}·dᵀHd / dᵀDd   (= c·(D⁻¹g)ᵀH(D⁻¹g)/(gᵀD⁻¹g) for d = D⁻¹g),   r = η·(λ_2s + w)/2,

needs no extra forward or backward pass. It is exact on a quadratic for the direction d actually
rebuilt (d and H·d are the same combination of measured differences). The plain secant (b = 0,
the momentum direction D⁻¹m, :mod:`monitor.secant`) announces spikes later: a spike grows along
the gradient, not along the momentum.

What is read. Nothing here touches `.grad`: from the optimizer's post-step hook, the parameters
and the optimizer's own state are read on a fixed coordinate sample
(:mod:`monitor.coordinate_sample`), whose views are made once. Δθ is the update really applied;
the gradient is recovered from the state's recurrence, g^i = (m_{i+1} − β1·m_i)/(1−β1), which is
exactly the gradient the optimizer used: after clipping, unscaling, accumulation, with
``maximize``'s sign and coupled L2 included (so the quotient is that of the effective Hessian).
The gradient g^{i+1} is known after step i+2, so the reading of gradient i comes at the post-step
hook of step i+2: the moment the pre-step hook of step i+2 would have it, plus that step itself.
From the same sample and step: ρ = ‖g‖/‖√v̂‖ (v decays like β2 per step when ρ ≪ 1).

Variants. AdamW's decoupled decay adds −η·w·θ to Δθ, so d ≈ D⁻¹g + w·θ, the direction AdamW
moves; r adds w as in :mod:`monitor.curvature`. AMSGrad's D uses the running max. Several param
groups combine through the η-weighted operator (as :mod:`monitor.curvature`), each group's d
normalised to ≈ D⁻¹g. SGD with heavy-ball momentum μ and dampening δ gets the same algebra
(buf_{i+1} = −Δθ_i/η_{i+1} = μ·buf_i + (1−δ)·g^i): a = −1/(η_{i+1}(1−δ)), b = μ/(η_i(1−δ)),
D = 1, c = (1−δ)/(1+μ) (threshold 2(1+μ)/((1−δ)η)); plain SGD reads g = −Δθ/η. Nesterov
momentum is refused (its update does not close over two steps).

Cost. Per step: one `cat` reads θ and the state's m on the sample; one small matrix product
forms Δθ, g, d and the pieces of H·d from them and the last step's rows; one more reduces the
per-group sums: about twenty tensor operations in all, whatever the model's size (the work is
proportional to the sample). v follows Adam's own recurrence v ← β2·v + (1−β2)·g² on the sample
(g is known), re-read from the state every `V_RESYNC` steps: D must be current (before a spike the
ratio sits within 1–2 % of 1 for tens of steps, and v moves by 0.05 % a step), and reading it
would cost as much as reading θ and m together; whoever changes v outside the optimizer (the
guard's lift) calls `resync_v` so the next update reads it.

`update` reads a step and computes at once. An agent may split it: `record` reads the sample
(what cannot wait: the next step overwrites it) and `flush` computes the readings of the steps
recorded since, back to back, where all but the first find the caches warm.

Readings start at the fourth consecutive step seen; a step the hook did not see restarts the
history. A parameter the optimizer skipped at a step (no gradient) has Δθ = 0 and adds nothing to
the quotient. Nothing here synchronises with the device: the step's coefficients reach an
accelerator through pinned memory without blocking. Results are float32 tensors.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from spikewatch.monitor._arrays import Arrays
from spikewatch.monitor._two_secant_algebra import (
    DG_LAST,
    DTHETA,
    GRAD,
    HD_LAST,
    N_OUT,
    Constants,
    D,
    Hyper,
    HyperReader,
)
from spikewatch.monitor._two_secant_reading import SMOOTHING, TwoSecantReading
from spikewatch.monitor.adam_state import UnsupportedOptimizer
from spikewatch.monitor.coordinate_sample import CoordinateSample, default_fraction, work_dtype

__all__ = ["BYTES_PER_COORD", "SMOOTHING", "V_RESYNC", "TwoSecant", "TwoSecantReading"]

BYTES_PER_COORD = 56  # kept rows: θ, m and the six step rows, D·Δθ, D·d', v; the sample weight
V_RESYNC = 100  # steps between reads of v from the optimizer state


class _Pending(NamedTuple):
    """One recorded step: its reads (θ, the carrier), hyper-parameters, the count of steps it
    completed, its place in a run of consecutive steps, and v where it was read."""

    reads: Any
    hyper: tuple[Hyper, ...]
    completed: int
    seen: int
    v: Any


class TwoSecant:
    """The two-secant curvature and ρ of a live Adam/AdamW (or SGD) optimizer.

    Call :meth:`update` from the optimizer's post-step hook of *every* step with ``completed``,
    the number of optimizer steps completed so far; once four consecutive steps have been seen it
    returns the reading of gradient ``completed − 2``. ``fraction`` is the share of coordinates
    sampled (default :func:`~monitor.coordinate_sample.default_fraction`: the estimator's memory
    is 1 % of the parameters' bytes, and at least 512 coordinates). ``smoothing`` is the weight
    of the past in the exponential averages of each quotient's numerator and denominator (0: the
    raw quotient of this step).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, fraction: float | None = None,
                 seed: int = 0, smoothing: float = SMOOTHING) -> None:
        if isinstance(optimizer, torch.optim.Adam):
            self.kind = "adam"
        elif isinstance(optimizer, torch.optim.SGD):
            if any(g.get("nesterov", False) for g in optimizer.param_groups):
                raise UnsupportedOptimizer(
                    "the two-secant curvature supports SGD with heavy-ball momentum, not Nesterov "
                    "momentum (its update does not close over two steps)")
            self.kind = "sgd"
        else:
            raise UnsupportedOptimizer(
                f"the two-secant curvature reads torch.optim.Adam/AdamW or SGD, not "
                f"{type(optimizer).__name__!r}")
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.optimizer = optimizer
        self.smoothing = smoothing
        self.fraction = fraction
        self.seed = seed
        self.sample: CoordinateSample | None = None
        self._hyper = HyperReader(optimizer, self.kind)
        self._params: list[Tensor] = []
        self._group_ids: list[int] = []  # param groups present in the sample
        self._slices: list[slice] = []  # per group present: its columns in the sample
        self._mask: Any = None  # (groups, coords): the sample's weights, a group per row
        self._weights: Any = None  # (coords,): the same, every group in one row
        self._keys: tuple[str | None, str | None] = (None, None)  # gradient carrier, v
        self._arrays: Arrays | None = None
        self._views: list[Any] = []  # θ's, then the carrier's (in the arrays' namespace)
        self._v_views: list[Any] = []
        self._source: Tensor | None = None  # the state tensor whose identity keeps views valid
        self._dtype = torch.float32
        self._consts: Constants | None = None
        self._hypers_of: tuple[object, tuple[Hyper, ...]] = (None, ())
        self.reset()

    # --- the sample ------------------------------------------------------------------------
    def _state_keys(self) -> tuple[str | None, str | None]:
        if self.kind == "adam":
            ams = any(g.get("amsgrad", False) for g in self.optimizer.param_groups)
            return "exp_avg", "max_exp_avg_sq" if ams else "exp_avg_sq"
        momentum = any(float(g.get("momentum", 0.0)) != 0.0 for g in self.optimizer.param_groups)
        return ("momentum_buffer" if momentum else None), None

    def _build(self) -> bool:
        """Sample the parameters that have optimizer state (were stepped); False if none."""
        keys = self._state_keys()
        live = []
        for gi, g in enumerate(self.optimizer.param_groups):
            for p in g["params"]:
                st = self.optimizer.state.get(p) or {}
                if (st or self.kind == "sgd") and all(
                        k is None or isinstance(st.get(k), Tensor) for k in keys):
                    live.append((gi, p))
        if not live:
            return False
        fraction = self.fraction or default_fraction([p for _, p in live],
                                                     bytes_per_coord=BYTES_PER_COORD)
        try:
            sample = CoordinateSample([p.detach() for _, p in live], fraction, seed=self.seed)
        except ValueError:  # only tensors too small to sample
            return False
        live = [live[i] for i in sample.index]
        params = [p for _, p in live]
        self.sample, self._params, self._keys = sample, params, keys
        group_of = [gi for gi, _ in live]
        self._dtype = work_dtype([p.dtype for p in params])
        state = [self.optimizer.state[p][k].dtype for p in params[:1] for k in keys if k]
        arr = self._arrays = Arrays(sample.weights.device, self._dtype,
                                    [p.dtype for p in params] + state)
        self._group_ids = sorted(set(group_of))
        self._slices = []
        weights = self._weights = arr.from_tensor(sample.weights)
        self._mask = arr.zeros((len(self._group_ids), sample.size))
        for row, gi in enumerate(self._group_ids):
            idx = [j for j, g in enumerate(group_of) if g == gi]
            sl = slice(sample.segments[idx[0]].start, sample.segments[idx[-1]].stop)
            self._slices.append(sl)
            self._mask[row, sl] = weights[sl]
        self._views, self._v_views, self._source = [], [], None
        self._consts = Constants(self.kind, keys[0] is None, arr)
        self.reset()
        return True

    @property
    def coords(self) -> int:
        """Sampled coordinates (0 before the first update)."""
        return 0 if self.sample is None else self.sample.size

    @property
    def memory_bytes(self) -> int:
        """Bytes kept between steps (see `BYTES_PER_COORD`; more for float64 models or several
        param groups)."""
        per = BYTES_PER_COORD * (2 if self._dtype == torch.float64 else 1)
        return (per + 4 * max(len(self._group_ids) - 1, 0)) * self.coords

    def reset(self) -> None:
        """Forget the history (readings need four consecutive steps again)."""
        self._k = -1  # completed steps at the last update
        self._seen = 0  # consecutive updates so far
        self._reads: Any = None  # (2, coords): θ and the carrier at the last update
        self._out: Any = None  # (N_OUT, coords): the last linear step's output
        self._scaled: Any = None  # (2, coords): D·Δθ, D·d' of the pending gradient
        self._rho: Any = None  # (2, groups): Σg², Σv̂ of the pending gradient
        self._ema: Any = None  # smoothed numerators and denominators
        self._hyper_last: tuple[Hyper, ...] | None = None
        self._v: Any = None  # v on the sample, after the last flushed step
        self._v_age = 0  # recorded steps since v was last read
        self._pending: list[_Pending] = []  # recorded, not yet flushed (dropped here)

    def resync_v(self) -> None:
        """Read v from the optimizer state at the next update instead of following Adam's
        recurrence: call it when something outside the optimizer changed v (the guard's lift)."""
        self._v_age = V_RESYNC

    # --- reads -------------------------------------------------------------------------------
    def _refresh_views(self) -> None:
        """Views of θ, the carrier (m, the momentum buffer, or θ again for plain SGD) and v,
        made again when the optimizer's state tensors were replaced (e.g. a checkpoint load,
        which replaces them all: the first parameter's tells)."""
        carrier_key, v_key = self._keys
        state = self.optimizer.state
        key = carrier_key or v_key
        source = None if key is None else state[self._params[0]][key]
        if self._views and source is self._source:
            return
        if self._views:  # a checkpoint load (a rollback, perhaps): the history is not ours
            self.reset()
        assert self.sample is not None
        assert self._arrays is not None
        theta = self.sample.views([p.detach() for p in self._params])
        carrier = (theta if carrier_key is None else
                   self.sample.views([state[p][carrier_key] for p in self._params]))
        self._views = self._arrays.views(theta + carrier)
        self._v_views = ([] if v_key is None else self._arrays.views(
            self.sample.views([state[p][v_key] for p in self._params])))
        self._source = source

    def _hypers(self, hyper: tuple[Hyper, ...]) -> tuple[Hyper, ...]:
        """The sampled groups' hyper-parameters (the same object while they are unchanged)."""
        if hyper is not self._hypers_of[0]:
            self._hypers_of = (hyper, tuple(hyper[gi] for gi in self._group_ids))
        return self._hypers_of[1]

    def _advance_v(self, g2: Any, hyper: tuple[Hyper, ...], read: Any) -> Any:
        """v after this step: as `record` read it (AMSGrad's running max, or where due), else
        Adam's recurrence on the sample."""
        if read is not None:
            self._v = read
            return read
        v = self._v
        hs = self._hypers(hyper)
        if all(h.beta2 == hs[0].beta2 for h in hs):
            v *= hs[0].beta2
            v += (1.0 - hs[0].beta2) * g2
        else:
            for h, sl in zip(hs, self._slices, strict=True):
                v[sl] *= h.beta2
                v[sl] += (1.0 - h.beta2) * g2[sl]
        return v

    def _preconditioner(self, v: Any, hyper: tuple[Hyper, ...], completed: int
                        ) -> tuple[Any, Any]:
        """(v̂, D = √v̂ + ε) on the sample, from v after `completed` steps."""
        xp = self._arrays.xp if self._arrays is not None else torch
        hs = self._hypers(hyper)
        if all((h.beta2, h.eps) == (hs[0].beta2, hs[0].eps) for h in hs):
            vhat = v * (1.0 / (1.0 - hs[0].beta2 ** completed))
            return vhat, xp.sqrt(vhat) + hs[0].eps
        vhat = v * 1.0
        for h, sl in zip(hs, self._slices, strict=True):
            vhat[sl] *= 1.0 / (1.0 - h.beta2 ** completed)
        d = xp.sqrt(vhat)
        for h, sl in zip(hs, self._slices, strict=True):
            d[sl] += h.eps
        return vhat, d

    # --- per step ----------------------------------------------------------------------------
    def update(self, completed: int) -> TwoSecantReading | None:
        """Read step ``completed``'s result; the reading of gradient ``completed − 2`` if ready
        (`record` then `flush`, the last reading)."""
        self.record(completed)
        readings = self.flush()
        return readings[-1] if readings else None

    def record(self, completed: int) -> None:
        """Read step ``completed``'s sample (θ, the carrier, v when due) and keep it for `flush`:
        the part that cannot wait, as the next step overwrites what it reads."""
        if self.sample is None and not self._build():
            return
        assert self._arrays is not None
        try:
            self._refresh_views()
            reads = self._arrays.gather(self._views, 2)
        except (KeyError, TypeError, ValueError):  # state dropped or reshaped: sample afresh
            self.sample = None
            self._pending.clear()
            return
        hyper = self._hyper.read()
        self._seen = self._seen + 1 if completed == self._k + 1 else 1
        self._k = completed
        v = None
        if self._keys[1] is not None and (self._seen == 2 or self._keys[1] == "max_exp_avg_sq"
                                          or self._v_age >= V_RESYNC):
            v = self._arrays.gather(self._v_views)  # v after this step, read where it is due
            self._v_age = 0
        elif self._seen >= 2:
            self._v_age += 1
        self._pending.append(_Pending(reads, hyper, completed, self._seen, v))

    @property
    def pending(self) -> int:
        """Steps recorded and not yet flushed."""
        return len(self._pending)

    def flush(self) -> list[TwoSecantReading]:
        """The readings of the steps recorded since the last flush, oldest first. Run back to
        back, all but the first find the caches warm: flushing every few steps costs a fraction
        of flushing every step, and delays the readings by as many steps."""
        readings = []
        for p in self._pending:
            if p.seen >= 2:
                r = self._step(p)
                if r is not None:
                    readings.append(r)
            else:
                self._v = None  # a gap in the steps: v is read again
            self._reads, self._hyper_last = p.reads, p.hyper
        self._pending.clear()
        return readings

    def _step(self, p: _Pending) -> TwoSecantReading | None:
        """The linear step for gradient i = completed − 1, its D·d' and ρ sums, and, from the
        fourth consecutive step on, the reading of gradient i − 1."""
        assert self._consts is not None
        assert self._arrays is not None
        arr = self._arrays
        xp = arr.xp
        reads, hyper, completed, seen = p.reads, p.hyper, p.completed, p.seen
        i = completed - 1
        older = self._hyper_last if seen >= 3 else None
        cs, k_mat = self._consts.get(self._hypers(hyper),
                                     None if older is None else self._hypers(older), i)
        last = self._out
        if last is None or seen < 3:  # no Δθ_{i−1}, g^{i−1}, P'_{i−1} yet: zeros
            last = arr.zeros((N_OUT, reads.shape[1]))
        inp = xp.concatenate((reads, self._reads, last))
        if len(cs) == 1:
            out = cs[0] @ inp
        else:  # groups with different linear steps
            out = arr.zeros((N_OUT, inp.shape[1]))
            for c, sl in zip(cs, self._slices, strict=True):
                out[:, sl] = c @ inp[:, sl]
        grad = out[GRAD]  # g^i
        g2 = grad * grad
        if self._keys[1] is not None:
            vhat, dmat = self._preconditioner(self._advance_v(g2, hyper, p.v), hyper,
                                              completed)
            scaled = out[DTHETA:D + 1] * dmat  # D·Δθ_i, D·d'_i
        else:  # SGD: D = 1, no ρ (a placeholder v̂ of ones keeps its quotient finite)
            vhat, scaled = g2 * 0.0 + 1.0, out[DTHETA:D + 1]
        reading = None
        if seen >= 4 and self._scaled is not None and self._rho is not None:
            # gradient i−1: its direction pair against (Δg, H·d') and (D·Δθ, D·d'); g^i, v̂ for ρ
            dirs = last[DTHETA:D + 1]
            rows = xp.concatenate((out[DG_LAST:HD_LAST + 1] * dirs, self._scaled * dirs,
                                   g2[None], vhat[None]))
            sums = rows @ self._mask.T  # (N_SUMS, groups)
            parts = k_mat @ xp.concatenate((sums[:4], self._rho)).reshape(-1)
            ema = self._ema
            if ema is None or self.smoothing == 0.0:
                ema = parts
            else:  # an exponential average of each numerator and denominator; one that a
                # non-finite step poisoned starts afresh rather than staying NaN for good
                ema = xp.where(xp.isfinite(ema), ema + (1.0 - self.smoothing) * (parts - ema),
                               parts)
            self._ema = ema
            num, den = ema[0::2], arr.floor(ema[1::2], arr.tiny)
            values = num / den
            if self._keys[1] is not None:
                values[2] = values[2] ** 0.5
            else:  # SGD keeps no second moment: no ρ
                values[2] = float("nan")
            if arr.host:
                reading = TwoSecantReading(i - 1, None, [values.tolist(), num.tolist(),
                                                         den.tolist()])
            else:
                reading = TwoSecantReading(i - 1, torch.stack((values, num, den)).float(), None)
            self._rho = sums[4:]
        else:
            self._rho = xp.stack((g2, vhat)) @ self._mask.T
        self._out, self._scaled = out, scaled
        return reading

