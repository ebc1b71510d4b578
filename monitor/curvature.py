"""Adam's preconditioned curvature (arXiv:2506.04805): λ_grad, λ_max(Ĥ), alignment, stability ratio.

Definitions, at the step t about to run (measured from an optimizer pre-step hook, so pass
``include_current_grad=True``; see :mod:`monitor.adam_state`):

- Ĥ = c_t·D⁻¹·H_eff with D = √v̂_t + ε and c_t = (1/(1−β1^t))·((1−β1)/(1+β1)).
  H_eff is the Hessian of the objective Adam actually minimises: −H under ``maximize``, plus wd·I
  for Adam's coupled L2 (g ← g + wd·θ adds wd·I to the Hessian). g is the matching effective
  gradient (±g + wd·θ).
- λ_grad = gᵀĤg/‖g‖² (the paper's gradient-directional curvature; one Hessian-vector product).
- λ_max(Ĥ): Ĥ is similar to the symmetric S = c·D^{-1/2}·H_eff·D^{-1/2} (Ĥ = D^{-1/2} S D^{1/2}),
  so its eigenvalues are real; found by warm-started power iteration on S.
- Alignment: Ĥ is self-adjoint in the metric ⟨x, y⟩_D = xᵀDy, in which its eigenvectors
  q = D^{-1/2}u are orthogonal. The cosine is taken there, between the preconditioned gradient
  D⁻¹g (the direction Adam moves) and q: |cos| = |uᵀ D^{-1/2}g| / (‖u‖·‖D^{-1/2}g‖), i.e. the
  Euclidean cosine in the whitened coordinates y = D^{1/2}θ in which S is the Hessian.

Stability ratio. Linearise one Adam step on a quadratic with D frozen, along an eigendirection of Ĥ
with eigenvalue λ, with decoupled weight decay w (AdamW: θ ← (1 − ηw)θ − η·m̂/D):
θ_{t+1} = (1 − ηw + β1 − η(1+β1)λ)·θ_t − β1(1 − ηw)·θ_{t−1}. By the Jury criterion the oscillating
root leaves the unit disc when η(1+β1)λ > (1+β1)(2 − ηw), i.e. when η(λ + w) > 2. Hence

    r = η·(λ + w)/2,   r ≥ 1 ⇔ beyond the edge of stability,

exact for a single group (w·I commutes with Ĥ, so the eigendirections are shared). Decoupled decay
thus *adds* w to the curvature (the shrink pushes the oscillating mode towards −1); coupled L2
enters H_eff instead and is scaled by c/D like the rest of the Hessian. With several param groups
(different η, c, w), r is computed from the η-weighted operator P·H_eff + W, P = diag(η·c/D),
W = diag(η·w): r_grad = gᵀ(P·H_eff + W)g / (2‖g‖²) and r_max = λ_max(P^{1/2}H_eff P^{1/2} + W)/2,
which is the single-group formula when the groups agree.

Results are 0-d float32 tensors on the parameters' device; only :class:`TopEigen` with a
tolerance synchronises (once per iteration, to test convergence), by design.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from spikewatch.monitor.adam_state import ParamView, c_t, effective_grad, preconditioner
from spikewatch.monitor.hvp import HVP

__all__ = [
    "GradCurvature",
    "TopCurvature",
    "TopEigen",
    "gradient_curvature",
    "stability_ratio",
]


def stability_ratio(lam: Tensor | float, lr: float, decoupled_wd: float = 0.0) -> Tensor | float:
    """r = η·(λ + w)/2 for one group (w: AdamW's decoupled weight decay, 0 for Adam)."""
    return lr * (lam + decoupled_wd) / 2.0


@dataclass(frozen=True, slots=True)
class _Operator:
    """The pieces of Ĥ and of the η-weighted operator, per parameter."""

    params: list[Tensor]
    c_over_d: list[Tensor]  # c_t/D
    sqrt_p: list[Tensor]  # √(η·c_t/D)
    eta: list[float]
    decay: list[float]  # η·w (decoupled)
    l2: list[float]  # coupled wd
    sign: list[float]  # −1 under maximize
    grad: list[Tensor]  # effective gradient, float32
    eta_ref: float
    w_ref: float

    def h_eff(self, hvp: HVP, vectors: Sequence[Tensor]) -> list[Tensor]:
        hv = hvp(vectors)
        return [
            s * h + (l2 * v if l2 != 0.0 else 0.0)
            for s, h, l2, v in zip(self.sign, hv, self.l2, vectors, strict=True)
        ]


def _operator(views: Sequence[ParamView], hvp: HVP, include_current_grad: bool) -> _Operator:
    if not views:
        raise ValueError("no parameters to measure")
    if len(views) != len(hvp.params) or any(
        v.param is not p for v, p in zip(views, hvp.params, strict=False)
    ):
        raise ValueError("views and the HVP backend must cover the same parameters, in order")
    c_over_d, sqrt_p, eta, decay, l2, sign, grad = [], [], [], [], [], [], []
    for v in views:
        h = v.hyper
        t = v.step + 1 if include_current_grad else v.step
        cd = c_t(h.beta1, t) / preconditioner(v, include_current_grad=include_current_grad)
        c_over_d.append(cd)
        sqrt_p.append((h.lr * cd).sqrt())
        eta.append(h.lr)
        decay.append(h.lr * h.weight_decay if h.decoupled_wd else 0.0)
        l2.append(0.0 if h.decoupled_wd else h.weight_decay)
        sign.append(-1.0 if h.maximize else 1.0)
        grad.append(effective_grad(v))
    first = views[0].hyper
    if first.lr <= 0.0:
        raise ValueError(f"learning rate must be positive to define a stability ratio: {first.lr}")
    return _Operator(params=[v.param for v in views], c_over_d=c_over_d, sqrt_p=sqrt_p, eta=eta,
                     decay=decay, l2=l2, sign=sign, grad=grad, eta_ref=first.lr,
                     w_ref=first.weight_decay if first.decoupled_wd else 0.0)


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return torch.stack([(x * y).sum() for x, y in zip(a, b, strict=True)]).sum()


@dataclass(frozen=True, slots=True)
class GradCurvature:
    """λ_grad = gᵀĤg/‖g‖² and its stability ratio (0-d float32 device tensors)."""

    lambda_grad: Tensor
    stability_ratio: Tensor


def gradient_curvature(
    views: Sequence[ParamView], hvp: HVP, *, include_current_grad: bool = True
) -> GradCurvature:
    """λ_grad and r_grad from one Hessian-vector product along the effective gradient.

    ``views`` are the parameters to measure (with gradients), in the order of ``hvp.params``.
    No host synchronisation.
    """
    op = _operator(views, hvp, include_current_grad)
    hg = op.h_eff(hvp, op.grad)
    g2 = _dot(op.grad, op.grad)
    quad = _dot([g * cd for g, cd in zip(op.grad, op.c_over_d, strict=True)], hg)
    weighted = torch.stack(
        [
            (eta * g * cd * h).sum() + dec * (g * g).sum()
            for g, cd, h, eta, dec in zip(op.grad, op.c_over_d, hg, op.eta, op.decay, strict=True)
        ]
    ).sum()
    tiny = torch.finfo(torch.float32).tiny
    g2 = torch.clamp(g2, min=tiny)
    return GradCurvature(lambda_grad=quad / g2, stability_ratio=weighted / (2.0 * g2))


@dataclass(frozen=True, slots=True)
class TopCurvature:
    """Top of the preconditioned spectrum, from :class:`TopEigen`.

    ``lambda_max`` is λ_max(Ĥ) (exact for a single group; with several groups the equivalent
    curvature 2r/η − w at the first group's η and w). ``converged`` is None when no tolerance
    was set (fixed iteration count, no synchronisation).
    """

    lambda_max: Tensor
    stability_ratio: Tensor
    grad_cos: Tensor
    iterations: int
    converged: bool | None


class TopEigen:
    """Warm-started power iteration for the top eigenpair of the preconditioned Hessian.

    Keeps the last eigenvector (one parameter-sized float32 buffer) and starts the next call from
    it: between nearby steps a few iterations suffice. With ``tol`` set, iteration stops when the
    residual ‖S·u − λu‖ falls below ``tol``·|λ| (so the eigenvector, not only the eigenvalue, has
    converged), at one host sync per iteration; if
    the dominant eigenvalue found is negative, a second, shifted run finds the largest positive
    one. With ``tol=None`` it runs exactly ``max_iters`` iterations without synchronising and
    returns the eigenvalue of largest magnitude.
    """

    def __init__(self, *, max_iters: int = 20, tol: float | None = 1e-3, seed: int = 0) -> None:
        if max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {max_iters}")
        if tol is not None and not tol > 0:
            raise ValueError(f"tol must be positive or None, got {tol}")
        self.max_iters = max_iters
        self.tol = tol
        self.seed = seed
        self._u: list[Tensor] | None = None

    def reset(self) -> None:
        """Forget the warm start."""
        self._u = None

    def _start(self, op: _Operator) -> list[Tensor]:
        u = self._u
        if u is not None and [x.shape for x in u] == [p.shape for p in op.params]:
            return u
        gen = torch.Generator().manual_seed(self.seed)
        return [
            torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device) for p in op.params
        ]

    def _apply(self, op: _Operator, hvp: HVP, u: Sequence[Tensor]) -> list[Tensor]:
        """S_η·u = P^{1/2}·H_eff·P^{1/2}·u + W·u."""
        hx = op.h_eff(hvp, [sp * x for sp, x in zip(op.sqrt_p, u, strict=True)])
        return [
            sp * h + (dec * x if dec != 0.0 else 0.0)
            for sp, h, x, dec in zip(op.sqrt_p, hx, u, op.decay, strict=True)
        ]

    def _power(
        self, op: _Operator, hvp: HVP, u: list[Tensor], shift: float, budget: int
    ) -> tuple[list[Tensor], Tensor, int, bool]:
        tiny = torch.finfo(torch.float32).tiny
        norm = torch.clamp(torch.sqrt(_dot(u, u)), min=tiny)
        u = [x / norm for x in u]
        lam = torch.zeros((), device=u[0].device)
        for it in range(1, budget + 1):
            z = self._apply(op, hvp, u)
            if shift != 0.0:
                z = [a - shift * b for a, b in zip(z, u, strict=True)]
            lam = _dot(u, z)
            done = False
            if self.tol is not None:
                res = [a - lam * b for a, b in zip(z, u, strict=True)]
                bound = self.tol * torch.clamp(lam.abs(), min=tiny)
                done = bool(torch.sqrt(_dot(res, res)) <= bound)  # host sync, by design
            znorm = torch.clamp(torch.sqrt(_dot(z, z)), min=tiny)
            u = [x / znorm for x in z]
            if done:
                return u, lam + shift, it, True
        return u, lam + shift, budget, False

    def __call__(
        self, views: Sequence[ParamView], hvp: HVP, *, include_current_grad: bool = True
    ) -> TopCurvature:
        """Power iteration from the warm start; at most ``max_iters`` Hessian-vector products."""
        op = _operator(views, hvp, include_current_grad)
        u, lam, iters, converged = self._power(op, hvp, self._start(op), 0.0, self.max_iters)
        if self.tol is not None and float(lam) < 0.0:
            # The dominant eigenvalue is negative: shift it to zero and find the top positive one.
            # Restart from a fresh vector: the old one is the shifted operator's null direction.
            extra = max(self.max_iters - iters, 1)
            self._u = None
            u, lam, more, converged = self._power(op, hvp, self._start(op), float(lam), extra)
            iters += more
        self._u = [x.detach().clone() for x in u]
        # Alignment in whitened coordinates: cos(P^{1/2}g, u) (see module docstring).
        pg = [sp * g for sp, g in zip(op.sqrt_p, op.grad, strict=True)]
        tiny = torch.finfo(torch.float32).tiny
        cos = _dot(pg, u).abs() / torch.clamp(
            torch.sqrt(_dot(pg, pg)) * torch.sqrt(_dot(u, u)), min=tiny
        )
        ratio = lam / 2.0
        lambda_max = lam / op.eta_ref - op.w_ref
        return TopCurvature(
            lambda_max=lambda_max,
            stability_ratio=ratio,
            grad_cos=cos,
            iterations=iters,
            converged=converged if self.tol is not None else None,
        )
