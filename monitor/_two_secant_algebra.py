"""The numbers behind one two-secant step: hyper-parameters as a step used them, and the small
matrices that turn the sampled rows into d, H·d and the quotients (see :mod:`monitor.two_secant`).

Everything here is host arithmetic on a handful of floats; the matrices are cached and rebuilt
only when the numbers they hold change (a learning-rate schedule changes them every step: a
rebuild is a few dozen float operations and one small tensor).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from spikewatch.monitor._arrays import Arrays
from spikewatch.monitor.hparams import raw_groups

# Rows of the linear step's input: this step's reads (θ, carrier), the last step's reads, and the
# last step's output rows (all six; C ignores the ones it does not use).
N_IN = 10
# Rows of its output. The first two (Δθ, d') are a direction pair: their products with the next
# step's (Δg, H·d') and with (D·Δθ, D·d') give the quotients' sums.
DTHETA, D, GRAD, PP, DG_LAST, HD_LAST = range(6)
N_OUT = 6
_IN_THETA, _IN_CARRIER, _IN_THETA_P, _IN_CARRIER_P = range(4)
_IN_LAST = 4  # + an output row index: that row of the last step
# Sums per group, in the order the reduction produces them.
S_THETA_DG, S_D_HD, S_THETA_DTHETA, S_D_DD, S_G2, S_V = range(6)
N_SUMS = 6
# Numerators and denominators of the reading's values, interleaved.
N_PARTS = 8  # [λ_two_secant, r, ρ², r_secant] × (num, den)


@dataclass(frozen=True, slots=True)
class Hyper:
    """One param group's hyper-parameters as a step used them."""

    lr: float
    beta1: float  # Adam β1, SGD momentum μ
    beta2: float
    eps: float
    decay: float  # decoupled weight decay w (AdamW)
    dampening: float


def _num(x: Any) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


class HyperReader:
    """The groups' hyper-parameters, parsed again only when their raw values change."""

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str) -> None:
        self.optimizer = optimizer
        self.kind = kind
        self.decoupled = bool(isinstance(optimizer, torch.optim.AdamW))
        self._raw: list[tuple[Any, ...]] | None = None
        self._parsed: tuple[Hyper, ...] = ()

    def read(self) -> tuple[Hyper, ...]:
        groups = self.optimizer.param_groups
        raw = raw_groups(groups)
        if raw == self._raw:
            return self._parsed
        out = []
        for g in groups:
            if self.kind == "adam":
                b1, b2 = g["betas"]
                decoupled = bool(g.get("decoupled_weight_decay", self.decoupled))
                out.append(Hyper(_num(g["lr"]), _num(b1), _num(b2), _num(g["eps"]),
                                 _num(g["weight_decay"]) if decoupled else 0.0, 0.0))
            else:
                out.append(Hyper(_num(g["lr"]), _num(g.get("momentum", 0.0)), 0.0, 0.0, 0.0,
                                 _num(g.get("dampening", 0.0))))
        tensors = any(isinstance(x, Tensor) for r in raw for x in r)
        self._raw = None if tensors else raw  # tensor hyper-parameters: read every step
        self._parsed = tuple(out)
        return self._parsed


def _carrier(kind: str, plain_sgd: bool, h: Hyper) -> tuple[float, float]:
    """(s, carried): g^i = s·(carrier_{i+1} − carried·carrier_i)."""
    if plain_sgd:  # g^i = −Δθ_i/η_{i+1}; the "carrier" rows hold θ
        return (-1.0 / h.lr if h.lr > 0.0 else 0.0), 1.0
    if kind == "adam":  # g^i = (m_{i+1} − β1·m_i)/(1−β1)
        return 1.0 / (1.0 - h.beta1), h.beta1
    return 1.0 / (1.0 - h.dampening), h.beta1  # SGD momentum: (buf_{i+1} − μ·buf_i)/(1−δ)


def _c_key(kind: str, plain_sgd: bool, h: Hyper) -> tuple[float, ...]:
    """What C0 and C1 depend on (not the lr, except for plain SGD)."""
    return (h.lr,) if plain_sgd else (h.beta1,) if kind == "adam" else (h.beta1, h.dampening)


def step_beta(kind: str, h: Hyper, hp: Hyper | None, i: int) -> float:
    """β' of the linear step for gradient i (C = C0 + β'·C1: d'_i = Δθ_i + β'·Δθ_{i−1}, ∝ D⁻¹g^i).
    h: step i+1's hyper-parameters, hp: step i's (None before the second step: β' = 0)."""
    if hp is None or h.beta1 == 0.0 or h.lr <= 0.0 or hp.lr <= 0.0:
        return 0.0
    if kind == "adam":
        return -h.beta1 * ((1.0 - hp.beta1 ** i) / hp.lr) / ((1.0 - h.beta1 ** (i + 1)) / h.lr)
    return -h.beta1 * h.lr / hp.lr


def _c0(kind: str, plain_sgd: bool, h: Hyper) -> list[float]:
    """C0 of the linear step, N_OUT × N_IN row-major. Rows: Δθ_i, d'_i = Δθ_i + β'Δθ_{i−1}, g^i,
    P'_i (with H·d'_i = g^{i+1} + P'_i), Δg_{i−1} = g^i − g^{i−1}, H·d'_{i−1} = g^i + P'_{i−1}."""
    s, carried = _carrier(kind, plain_sgd, h)
    c0 = [0.0] * (N_OUT * N_IN)

    def put(row: int, col: int, value: float) -> None:
        c0[row * N_IN + col] += value

    for row in (DTHETA, D):  # Δθ_i = θ^{i+1} − θ^i (d' adds β'·Δθ_{i−1} through C1)
        put(row, _IN_THETA, 1.0)
        put(row, _IN_THETA_P, -1.0)
    for row in (GRAD, DG_LAST, HD_LAST):  # g^i
        put(row, _IN_CARRIER, s)
        put(row, _IN_CARRIER_P, -s * carried)
    put(PP, _IN_CARRIER, -s)  # P'_i = −g^i (+ β'·(g^i − g^{i−1}) through C1)
    put(PP, _IN_CARRIER_P, s * carried)
    put(DG_LAST, _IN_LAST + GRAD, -1.0)
    put(HD_LAST, _IN_LAST + PP, 1.0)
    return c0


def _c1(kind: str, plain_sgd: bool, h: Hyper) -> list[float]:
    """What β' multiplies: d' gains Δθ_{i−1}, P' gains g^i − g^{i−1}."""
    s, carried = _carrier(kind, plain_sgd, h)
    c1 = [0.0] * (N_OUT * N_IN)
    c1[D * N_IN + _IN_LAST + DTHETA] = 1.0
    c1[PP * N_IN + _IN_CARRIER] = s
    c1[PP * N_IN + _IN_CARRIER_P] = -s * carried
    c1[PP * N_IN + _IN_LAST + GRAD] = -1.0
    return c1


def combination(kind: str, hypers: Sequence[Hyper], i: int) -> list[float]:
    """K for gradient i (hypers: step i+1's, one per sampled group), N_PARTS × N_SUMS·groups
    row-major: from the per-group sums to the numerators and denominators of [λ_two_secant, r,
    ρ², r_secant]. Each group's direction is normalised (d' to ≈ D⁻¹g, Δθ to ≈ D⁻¹m̂), which
    matters across groups only; r = η(λ + w)/2 through the η-weighted operator."""
    n = len(hypers)
    k = [0.0] * (N_PARTS * N_SUMS * n)

    def put(part: int, s: int, j: int, value: float) -> None:
        k[part * N_SUMS * n + s * n + j] = value

    for j, h in enumerate(hypers):
        put(4, S_G2, j, 1.0)  # ρ² = Σg² / Σv̂ (the v row is bias-corrected already)
        put(5, S_V, j, 1.0)
        if h.lr <= 0.0:
            continue
        if kind == "adam":
            b1 = 1.0 - h.beta1 ** (i + 1)
            a, c = (b1 / h.lr) / (1.0 - h.beta1), (1.0 - h.beta1) / ((1.0 + h.beta1) * b1)
            a_sec = b1 / h.lr
        else:
            damp = 1.0 - h.dampening if h.beta1 != 0.0 else 1.0
            a, c, a_sec = 1.0 / (h.lr * damp), damp / (1.0 + h.beta1), 1.0 / h.lr
        two, sec = a * a, a_sec * a_sec
        put(0, S_D_HD, j, two)  # λ = c·Σd·Hd / Σd·D·d
        put(1, S_D_DD, j, two / c)
        put(2, S_D_HD, j, 0.5 * two)  # r = ½(Σd·Hd + w·Σd·D·d/c) / (Σd·D·d/(c·η))
        put(2, S_D_DD, j, 0.5 * two * h.decay / c)
        put(3, S_D_DD, j, two / (c * h.lr))
        put(6, S_THETA_DG, j, 0.5 * sec)  # the plain secant's r, along Δθ
        put(6, S_THETA_DTHETA, j, 0.5 * sec * h.decay / c)
        put(7, S_THETA_DTHETA, j, sec / (c * h.lr))
    return k


class Constants:
    """C and K of a step as arrays of the sample's namespace, cached while their numbers hold.

    A learning-rate schedule changes them at every step. C0 and C1 depend on β1 (and SGD's
    dampening) only and are kept, a few pairs at most (an lr schedule adds none); a step's C is
    then one array operation, C0 + β'·C1, and its K a list of a few dozen floats.
    """

    _KEEP = 8  # C0/C1 pairs kept (a schedule of β1 itself renews them)

    def __init__(self, kind: str, plain_sgd: bool, arrays: Arrays) -> None:
        self.kind = kind
        self.plain_sgd = plain_sgd
        self.arrays = arrays
        self._pairs: dict[tuple[float, ...], tuple[Any, Any]] = {}
        self._key: Any = (None, None, None)
        self._mats: tuple[list[Any], Any] | None = None

    def _pair(self, h: Hyper) -> tuple[Any, Any]:
        key = _c_key(self.kind, self.plain_sgd, h)
        pair = self._pairs.get(key)
        if pair is None:
            if len(self._pairs) >= self._KEEP:
                self._pairs.clear()
            shape = (N_OUT, N_IN)
            pair = self._pairs[key] = (
                self.arrays.const(_c0(self.kind, self.plain_sgd, h), shape),
                self.arrays.const(_c1(self.kind, self.plain_sgd, h), shape))
        return pair

    def get(self, hypers: Sequence[Hyper], olders: Sequence[Hyper] | None, i: int
            ) -> tuple[list[Any], Any]:
        """(C per group, or one C for all, each N_OUT × N_IN; K) for gradient i; the reading of
        gradient i − 1 is combined with `olders` (step i's hyper-parameters)."""
        # β1's bias correction moves until β1^i vanishes in float32: then the key stops changing
        # (`hypers` and `olders` are the same objects while the hyper-parameters are unchanged)
        settled = max(h.beta1 for h in hypers) ** i < 1e-9
        key = (hypers, olders, -1 if settled else i)
        last = self._key
        if (self._mats is not None and key[2] == last[2] and hypers is last[0]
                and olders is last[1]):
            return self._mats
        k = combination(self.kind, olders if olders is not None else hypers, i - 1)
        k_mat = self.arrays.const(k, (N_PARTS, len(k) // N_PARTS))
        betas = [step_beta(self.kind, h, None if olders is None else olders[j], i)
                 for j, h in enumerate(hypers)]
        pairs = [self._pair(h) for h in hypers]
        if all(p is pairs[0] for p in pairs) and all(b == betas[0] for b in betas):
            cs = [pairs[0][0] + pairs[0][1] * betas[0]]  # one C for every group
        else:
            cs = [c0 + c1 * beta for (c0, c1), beta in zip(pairs, betas, strict=True)]
        self._mats = (cs, k_mat)
        self._key = key
        return self._mats
