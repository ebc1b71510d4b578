"""Profiles: how often each probe runs (every N optimizer steps; 0 = off) and how often to drain.

The predictor (the two-secant curvature along the gradient and ρ on a coordinate sample) runs
every step in every profile; cheap probes (loss, hyperparameters, the gradient norm) often;
full-pass diagnostics (ρ per tensor) less often; extra-pass probes (λ_grad with a
closure, λ_max power iteration) and SVD-based probes (spectral alignment, gradient spike share)
rarely. The overhead budget may stretch these cadences at run time, never shrink them below the
profile's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

# Probe names (also the layer keys of AGENT_CADENCE on the wire).
LOSS: Final = "loss"
HPARAMS: Final = "hparams"
GRAD_NORM: Final = "grad_norm"
PRECOND: Final = "precond"  # ρ, ‖√v̂‖, its decay rate, the phase label
TWO_SECANT: Final = "two_secant"  # curvature along the gradient, ρ, the plain secant: every step
CURVATURE: Final = "curvature"  # λ_grad with a closure (exact or finite-difference HVP)
LAMBDA_MAX: Final = "lambda_max"
ALIGNMENT: Final = "alignment"  # spectral alignment of nn.Linear inputs
SPIKE_SHARE: Final = "spike_share"
LOGITS: Final = "logits"  # over-confidence

PROBES: Final = (LOSS, HPARAMS, GRAD_NORM, PRECOND, TWO_SECANT, CURVATURE, LAMBDA_MAX, ALIGNMENT,
                 SPIKE_SHARE, LOGITS)
# The guard's runaway watch (`monitor.runaway`): timed and reported, not budgeted (not a probe).
RUNAWAY_WATCH: Final = "runaway_watch"
# Probes whose cadence the budget never stretches: they are host-only or a reference copy.
FIXED: Final = frozenset({LOSS, HPARAMS})
# The predictor the default rules page on: stretched only when it alone exceeds the budget, and
# then reported (a `prediction_degraded` event), never silently.
PREDICTIVE: Final = frozenset({TWO_SECANT})
MAX_CADENCE: Final = 1 << 14


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    cadences: Mapping[str, int]
    drain_every: int

    def __post_init__(self) -> None:
        unknown = set(self.cadences) - set(PROBES)
        if unknown:
            raise ValueError(f"profile {self.name}: unknown probes {sorted(unknown)}")
        if any(c < 0 for c in self.cadences.values()) or self.drain_every < 1:
            raise ValueError(f"profile {self.name}: cadences must be ≥ 0, drain_every ≥ 1")


def _p(name: str, drain_every: int, **cadences: int) -> Profile:
    full = dict.fromkeys(PROBES, 0) | cadences
    return Profile(name, MappingProxyType(full), drain_every)


PROFILES: Final[Mapping[str, Profile]] = MappingProxyType({
    "light": _p("light", 50, loss=1, hparams=1, two_secant=1, grad_norm=10, precond=50,
                curvature=100, lambda_max=0, alignment=500, spike_share=1000, logits=50),
    "default": _p("default", 25, loss=1, hparams=1, two_secant=1, grad_norm=1, precond=10,
                  curvature=10, lambda_max=100, alignment=100, spike_share=200, logits=10),
    "full": _p("full", 10, loss=1, hparams=1, two_secant=1, grad_norm=1, precond=1,
               curvature=1, lambda_max=10, alignment=5, spike_share=10, logits=1),
})
