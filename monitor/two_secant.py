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

Cost. Per step: one `cat` reads θ and the state's m and v on the sample; one small matrix product
forms Δθ, g, d and the pieces of H·d from them and the last step's rows; one more reduces the
per-group sums: about twenty tensor operations in all, whatever the model's size (the work is
proportional to the sample). v is read every step on purpose: before a spike the ratio sits within
1–2 % of 1 for tens of steps, so a D a few steps stale (0.05 % per step of β2 decay) moves the
crossing by steps.

Readings start at the fourth consecutive step seen; a step the hook did not see restarts the
history. A parameter the optimizer skipped at a step (no gradient) has Δθ = 0 and adds nothing to
the quotient. Nothing here synchronises with the device: the step's coefficients reach an
accelerator through pinned memory without blocking. Results are float32 tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from monitor.adam_state import UnsupportedOptimizer
from monitor.coordinate_sample import (
    CoordinateSample,
    default_fraction,
    gather,
    work_dtype,
)

__all__ = ["BYTES_PER_COORD", "TwoSecant", "TwoSecantReading"]

BYTES_PER_COORD = 44  # kept rows: θ, m, v, Δθ, g, P', d', D·d'; the weight and group mask

# Rows of the linear step's input: this step's reads, then the last step's rows.
_N_IN = 7
# Rows of its output: kept for the next step (first three), d', the last pending H·d' and Δg.
_DTHETA, _GRAD, _PP, _D, _HD_LAST, _DG_LAST = range(6)
_N_OUT = 6
SMOOTHING = 0.5  # EMA weight of the past in the quotients' numerators and denominators


@dataclass(frozen=True, slots=True)
class TwoSecantReading:
    """The curvature along gradient ``step`` (the gradient of the step that completed ``step``
    steps before it).

    ``values`` holds [λ_two_secant, stability ratio, ρ, the plain secant's stability ratio]
    (float32, on the parameters' device), each quotient of exponential averages (`SMOOTHING`)
    of its numerator and denominator; ``num``/``den`` those averages (value = num/den; ρ² for
    ρ), to combine the coordinate shards of a sharded job: they add over shards.
    """

    step: int
    values: Tensor
    num: Tensor
    den: Tensor

    @property
    def lambda_two_secant(self) -> Tensor:
        return self.values[0]

    @property
    def stability_ratio(self) -> Tensor:
        return self.values[1]

    @property
    def rho(self) -> Tensor:
        return self.values[2]

    @property
    def stability_ratio_secant(self) -> Tensor:
        return self.values[3]


@dataclass(frozen=True, slots=True)
class _Hyper:
    """One param group's hyper-parameters as a step used them."""

    lr: float
    beta1: float  # Adam β1, SGD momentum μ
    beta2: float
    eps: float
    decay: float  # decoupled weight decay w (AdamW)
    dampening: float


def _num(x: Any) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


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
        self._params: list[Tensor] = []
        self._group_ids: list[int] = []  # param groups present in the sample
        self._slices: list[slice] = []  # per group present: its columns in the sample
        self._mask = torch.empty(0)  # (groups, coords): the sample's weights, a group per row
        self._keys: tuple[str | None, str | None] = (None, None)  # gradient carrier, v
        self._views: list[Tensor] = []  # θ's, then the carrier's, then v's
        self._rows = 3
        self._sources: tuple[Tensor, ...] = ()  # tensors whose identity keeps the views valid
        self._dtype = torch.float32
        self._consts: tuple[Any, Tensor, Tensor] | None = None  # key, C (5×7), K (6×4G)
        self.reset()

    # --- the sample ------------------------------------------------------------------------
    def _state_keys(self) -> tuple[str | None, str | None]:
        if self.kind == "adam":
            ams = any(g.get("amsgrad", False) for g in self.optimizer.param_groups)
            return "exp_avg", "max_exp_avg_sq" if ams else "exp_avg_sq"
        momentum = any(_num(g.get("momentum", 0.0)) != 0.0 for g in self.optimizer.param_groups)
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
        self._group_ids = sorted(set(group_of))
        self._slices = []
        weights = sample.weights.to(self._dtype)
        self._mask = torch.zeros(len(self._group_ids), sample.size, dtype=self._dtype,
                                 device=weights.device)
        for row, gi in enumerate(self._group_ids):
            idx = [j for j, g in enumerate(group_of) if g == gi]
            sl = slice(sample.segments[idx[0]].start, sample.segments[idx[-1]].stop)
            self._slices.append(sl)
            self._mask[row, sl] = weights[sl]
        self._views, self._sources = [], ()
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
        self._reads: Tensor | None = None  # (rows, coords): θ, the carrier (, v) last update
        self._out: Tensor | None = None  # (5, coords): the last linear step's output
        self._scaled: Tensor | None = None  # (2, coords): D·Δθ, D·d' of the pending gradient
        self._ema: Tensor | None = None  # smoothed numerators and denominators
        self._rho: Tensor | None = None  # (2, groups): Σg², Σv̂ of the pending gradient
        self._hyper_last: tuple[_Hyper, ...] | None = None

    # --- reads -------------------------------------------------------------------------------
    def _refresh_views(self) -> None:
        """Views of θ, the carrier (m, the momentum buffer, or θ again for plain SGD) and v,
        made again when the optimizer's state tensors were replaced (e.g. a checkpoint load)."""
        carrier_key, v_key = self._keys
        state = self.optimizer.state
        first, last = self._params[0], self._params[-1]
        ends = tuple(state[p][k] for p in (first, last) for k in (carrier_key, v_key) if k)
        if self._views and len(ends) == len(self._sources) and all(
                a is b for a, b in zip(ends, self._sources, strict=True)):
            return
        assert self.sample is not None
        theta = self.sample.views([p.detach() for p in self._params])
        carrier = (theta if carrier_key is None else
                   self.sample.views([state[p][carrier_key] for p in self._params]))
        v = [] if v_key is None else self.sample.views([state[p][v_key] for p in self._params])
        self._views = theta + carrier + v
        self._rows = 3 if v else 2
        self._sources = ends

    def _preconditioner(self, v: Tensor, hyper: tuple[_Hyper, ...], completed: int
                        ) -> tuple[Tensor, Tensor]:
        """D = √v̂ + ε on the sample and Σv̂ per group, from v after `completed` steps."""
        hs = [hyper[gi] for gi in self._group_ids]
        if all((h.beta2, h.eps) == (hs[0].beta2, hs[0].eps) for h in hs):
            bc2 = 1.0 - hs[0].beta2 ** completed
            return (torch.sqrt(v).mul_(bc2 ** -0.5).add_(hs[0].eps),
                    (self._mask @ v).mul_(1.0 / bc2))
        scale = torch.sqrt(v)
        vsum = self._mask @ v
        for j, (h, sl) in enumerate(zip(hs, self._slices, strict=True)):
            bc2 = 1.0 - h.beta2 ** completed
            scale[sl].mul_(bc2 ** -0.5).add_(h.eps)
            vsum[j : j + 1].mul_(1.0 / bc2)
        return scale, vsum

    def _hyper(self) -> tuple[_Hyper, ...]:
        out = []
        for g in self.optimizer.param_groups:
            if self.kind == "adam":
                b1, b2 = g["betas"]
                decoupled = bool(g.get("decoupled_weight_decay",
                                       isinstance(self.optimizer, torch.optim.AdamW)))
                out.append(_Hyper(_num(g["lr"]), _num(b1), _num(b2), _num(g["eps"]),
                                  _num(g["weight_decay"]) if decoupled else 0.0, 0.0))
            else:
                out.append(_Hyper(_num(g["lr"]), _num(g.get("momentum", 0.0)), 0.0, 0.0, 0.0,
                                  _num(g.get("dampening", 0.0))))
        return tuple(out)

    # --- per step ----------------------------------------------------------------------------
    def update(self, completed: int) -> TwoSecantReading | None:
        """Read step ``completed``'s result; the reading of gradient ``completed − 2`` if ready."""
        if self.sample is None and not self._build():
            return None
        try:
            self._refresh_views()
            reads = gather(self._views, self._dtype, self._rows)
        except (KeyError, TypeError, ValueError):  # state dropped or reshaped: sample afresh
            self.sample = None
            return None
        hyper = self._hyper()
        self._seen = self._seen + 1 if completed == self._k + 1 else 1
        self._k = completed
        reading = None
        if self._seen >= 2:
            reading = self._step(reads, hyper, completed)
        self._reads, self._hyper_last = reads, hyper
        return reading

    def _step(self, reads: Tensor, hyper: tuple[_Hyper, ...], completed: int
              ) -> TwoSecantReading | None:
        """The linear step for gradient i = completed − 1, its D·d' and ρ sums, and, from the
        fourth consecutive step on, the reading of gradient i − 1."""
        assert self._reads is not None
        i = completed - 1
        older = self._hyper_last if self._seen >= 3 else None
        c_mat, k_mat = self._constants(hyper, older, i)
        last = self._out
        if last is None or self._seen < 3:  # no Δθ_{i−1}, g^{i−1}, P'_{i−1} yet: zeros
            last = torch.zeros(_N_OUT, reads.shape[1], dtype=reads.dtype, device=reads.device)
        inp = torch.cat((reads[:2], self._reads[:2], last[:3]))
        if c_mat.dim() == 2:
            out = c_mat @ inp
        else:  # groups with different linear steps
            out = torch.empty(_N_OUT, inp.shape[1], dtype=inp.dtype, device=inp.device)
            for c, sl in zip(c_mat.unbind(), self._slices, strict=True):
                out[:, sl] = c @ inp[:, sl]
        if self._rows == 3:
            scale, vsum = self._preconditioner(reads[2], hyper, completed)
            scaled = scale * out[_DTHETA:_D + 1:_D]  # D·Δθ_i, D·d'_i
        else:
            scaled, vsum = out[_DTHETA:_D + 1:_D], None
        reading = None
        if self._seen >= 4 and self._scaled is not None and self._rho is not None:
            # Σ d'·Hd', Σ d'·D·d' (gradient i−1); Σ Δθ·Δg, Σ Δθ·D·Δθ (its update); Σ g² (g^i)
            dth, d = last[_DTHETA], last[_D]
            sums = torch.stack((d * out[_HD_LAST], d * self._scaled[1], dth * out[_DG_LAST],
                                dth * self._scaled[0], out[_GRAD] * out[_GRAD])) @ self._mask.T
            parts = k_mat @ torch.cat((sums[:4], self._rho)).view(-1)
            ema = (parts if self._ema is None or self.smoothing == 0.0
                   else torch.lerp(self._ema, parts, 1.0 - self.smoothing))
            self._ema = ema
            num, den = ema[0::2], ema[1::2].clamp(min=torch.finfo(ema.dtype).tiny)
            values = (num / den).float()
            if self._rows == 3:
                values[2:3].sqrt_()
            else:  # SGD keeps no second moment: no ρ
                values[2:3].fill_(float("nan"))
            reading = TwoSecantReading(i - 1, values, num.float(), den.float())
            g2 = sums[4]
        else:
            g2 = (out[_GRAD] * out[_GRAD]) @ self._mask.T
        self._rho = torch.stack((g2, torch.zeros_like(g2) if vsum is None else vsum))
        self._out, self._scaled = out, scaled
        return reading

    # --- constants of a step ----------------------------------------------------------------
    def _constants(self, hyper: tuple[_Hyper, ...], older: tuple[_Hyper, ...] | None, i: int
                   ) -> tuple[Tensor, Tensor]:
        """C, the linear step for gradient i (6 × 7, or groups × 6 × 7 when groups differ), and
        K, which combines the reading of gradient i − 1's per-group sums (8 × 6·groups)."""
        key = (hyper, older, i)
        if self._consts is not None and self._consts[0] == key:
            return self._consts[1], self._consts[2]
        coefs = [self._coefficients(hyper[gi], None if older is None else older[gi], i)
                 for gi in self._group_ids]
        same = all(c == coefs[0] for c in coefs)
        k = self._combination(hyper if older is None else older, i - 1)
        flat = (coefs[0] if same else [x for c in coefs for x in c]) + k
        t = torch.tensor(flat, dtype=self._dtype)
        like = self._mask
        if like.device.type != "cpu":  # to an accelerator without blocking the host
            t = t.pin_memory().to(like.device, non_blocking=True)
        n_c = len(flat) - len(k)
        c_mat = t[:n_c].view(_N_OUT, _N_IN) if same else t[:n_c].view(-1, _N_OUT, _N_IN)
        k_mat = t[n_c:].view(8, -1)
        self._consts = (key, c_mat, k_mat)
        return c_mat, k_mat

    def _coefficients(self, h: _Hyper, hp: _Hyper | None, i: int) -> list[float]:
        """The linear step for gradient i of one group (h: step i+1's hyper, hp: step i's).
        Columns: θ^{i+1}, c_{i+1}, θ^i, c_i, Δθ_{i−1}, g^{i−1}, P'_{i−1} (c: the carrier).
        Rows: Δθ_i, g^i, P'_i, d'_i, H·d'_{i−1}, Δg_{i−1} = g^i − g^{i−1}."""
        if self._keys[0] is None:  # plain SGD: g^i = −Δθ_i/η_{i+1}
            s, carried = (-1.0 / h.lr if h.lr > 0.0 else 0.0), 1.0
        elif self.kind == "adam":
            s, carried = 1.0 / (1.0 - h.beta1), h.beta1
        else:
            s, carried = 1.0 / (1.0 - h.dampening), h.beta1
        # β' = b/a: the last step's share of d' ∝ D⁻¹g^i (0 without momentum)
        if hp is None or h.beta1 == 0.0 or h.lr <= 0.0 or hp.lr <= 0.0:
            beta = 0.0
        elif self.kind == "adam":
            beta = -h.beta1 * ((1.0 - hp.beta1 ** i) / hp.lr) / ((1.0 - h.beta1 ** (i + 1)) / h.lr)
        else:
            beta = -h.beta1 * h.lr / hp.lr
        g = [0.0, s, 0.0, -s * carried, 0.0, 0.0, 0.0]  # g^i = s·(c_{i+1} − carried·c_i)
        return [
            1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0,  # Δθ_i = θ^{i+1} − θ^i
            *g,
            *[(beta - 1.0) * x for x in g[:5]], -beta, 0.0,  # P'_i = (β'−1)g^i − β'g^{i−1}
            1.0, 0.0, -1.0, 0.0, beta, 0.0, 0.0,  # d'_i = Δθ_i + β'Δθ_{i−1}
            *g[:6], 1.0,  # H·d'_{i−1} = g^i + P'_{i−1}
            *g[:5], -1.0, 0.0,  # Δg_{i−1} = g^i − g^{i−1}
        ]

    def _combination(self, hyper: tuple[_Hyper, ...], i: int) -> list[float]:
        """K for gradient i (hyper: step i+1's), from the per-group sums [Σd'·Hd', Σd'·D·d',
        ΣΔθ·Δg, ΣΔθ·D·Δθ, Σg², Σv̂] (6 × groups, row-major) to the numerators and denominators
        of [λ_two_secant, r, ρ², r_secant]."""
        n = len(self._group_ids)
        k = [[0.0] * (6 * n) for _ in range(8)]
        for j, gi in enumerate(self._group_ids):
            h = hyper[gi]
            k[4][4 * n + j] = k[5][5 * n + j] = 1.0
            if h.lr <= 0.0:
                continue
            if self.kind == "adam":
                b1 = 1.0 - h.beta1 ** (i + 1)
                a, c = (b1 / h.lr) / (1.0 - h.beta1), (1.0 - h.beta1) / ((1.0 + h.beta1) * b1)
                a_sec = b1 / h.lr  # Δθ·a_sec ≈ D⁻¹m̂
            else:
                damp = 1.0 - h.dampening if h.beta1 != 0.0 else 1.0
                a, c = 1.0 / (h.lr * damp), damp / (1.0 + h.beta1)
                a_sec = 1.0 / h.lr
            # each group's direction normalised (matters across groups only); r = η(λ+w)/2
            for (num, den, s_hd, s_dd), sc in (((0, 1, 0, 1), a * a), ((6, 7, 2, 3), a_sec ** 2)):
                if num == 0:
                    k[num][s_hd * n + j] = sc  # λ = c·Σd·Hd / Σd·D·d
                    k[den][s_dd * n + j] = sc / c
                    k[2][s_hd * n + j] = 0.5 * sc
                    k[2][s_dd * n + j] = 0.5 * sc * h.decay / c
                    k[3][s_dd * n + j] = sc / (c * h.lr)
                else:
                    k[num][s_hd * n + j] = 0.5 * sc
                    k[num][s_dd * n + j] = 0.5 * sc * h.decay / c
                    k[den][s_dd * n + j] = sc / (c * h.lr)
        return [x for row in k for x in row]
