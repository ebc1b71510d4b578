"""Live five-phase label of Adam's spike cycle (arXiv:2506.04805, section 4.4).

1 stable        loss decreasing, v tracks g²
2 v-decay       ‖g‖ ≪ ‖√v̂‖: v decays like β2 per step and η/√v̂ grows
3 onset         the stability ratio r = η·λ/2 stays ≥ 1 (sustained, not a single crossing)
4 v-growth      after onset the gradient grows enough that ‖√v‖ rises again
5 recovery      r back below 1; held for a few updates, then back to 1 or 2

Inputs per update are drained Python floats: ρ = ‖g‖/‖√v̂‖, the decay of ‖√v‖ in units of √β2
(1 = pure β2 decay, 1/√β2 = flat, above = growing) and r (None when no curvature probe ran).
Thresholds (constructor arguments, defaults in brackets):

- `rho_decay` [0.1]: ρ below it is the v-decay regime (g² adds < 1% of v per step's (1−β2) share).
- `rho_watch` [0.3] with the ρ trend: ρ below `rho_watch` *and* falling (EMA of Δlog ρ per update,
  weight `trend_alpha` [0.2], below −`trend_eps` [0.01]) is also phase 2 (decay under way).
- `onset_updates` [3]: consecutive updates with r ≥ 1 that make an onset.
- growth: decay·√β2 > 1 + `growth_tol` [0.0], i.e. ‖√v‖ increased since the previous update.
- `recovery_updates` [10]: updates with r < 1 that phase 5 lasts before returning to 1 or 2.

Without r (no curvature probe) an onset cannot be seen; a v-growth with ρ > 1 within
`decay_memory` [50] updates of a phase-2 label is then labelled 4 directly, and lasts while v
grows. Non-finite inputs leave the phase unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

__all__ = ["Phase", "PhaseLabeller", "PhaseUpdate"]


class Phase(IntEnum):
    STABLE = 1
    V_DECAY = 2
    ONSET = 3
    V_GROWTH = 4
    RECOVERY = 5


@dataclass(frozen=True, slots=True)
class PhaseUpdate:
    phase: Phase
    previous: Phase
    rho_trend: float  # EMA of Δlog ρ per update

    @property
    def changed(self) -> bool:
        return self.phase != self.previous


class PhaseLabeller:
    """Small state machine; `update` once per measurement, in step order."""

    def __init__(
        self,
        beta2: float = 0.999,
        *,
        rho_decay: float = 0.1,
        rho_watch: float = 0.3,
        trend_alpha: float = 0.2,
        trend_eps: float = 0.01,
        onset_updates: int = 3,
        growth_tol: float = 0.0,
        recovery_updates: int = 10,
        decay_memory: int = 50,
    ) -> None:
        if not 0.0 < beta2 < 1.0:
            raise ValueError(f"beta2 must be in (0, 1), got {beta2}")
        if not 0.0 < rho_decay <= rho_watch or not 0.0 < trend_alpha <= 1.0:
            raise ValueError("need 0 < rho_decay <= rho_watch and 0 < trend_alpha <= 1")
        if onset_updates < 1 or recovery_updates < 1:
            raise ValueError("onset_updates and recovery_updates must be >= 1")
        self.beta2 = beta2
        self.rho_decay = rho_decay
        self.rho_watch = rho_watch
        self.trend_alpha = trend_alpha
        self.trend_eps = trend_eps
        self.onset_updates = onset_updates
        self.growth_tol = growth_tol
        self.recovery_updates = recovery_updates
        self.decay_memory = decay_memory
        self._since_decay = decay_memory + 1  # updates since the last phase-2 label
        self.phase = Phase.STABLE
        self.rho_trend = 0.0
        self._last_log_rho: float | None = None
        self._high = 0  # consecutive updates with r >= 1
        self._calm = 0  # updates spent in recovery

    def update(self, rho: float, decay: float, ratio: float | None = None) -> PhaseUpdate:
        """Label the current step from ρ, the ‖√v‖ decay rate and the stability ratio r."""
        prev = self.phase
        if not (math.isfinite(rho) and math.isfinite(decay)) or (
            ratio is not None and math.isnan(ratio)
        ):
            return PhaseUpdate(prev, prev, self.rho_trend)
        if rho > 0:
            log_rho = math.log(rho)
            if self._last_log_rho is not None:
                step = log_rho - self._last_log_rho
                self.rho_trend += self.trend_alpha * (step - self.rho_trend)
            self._last_log_rho = log_rho
        growing = decay * math.sqrt(self.beta2) > 1.0 + self.growth_tol
        high = ratio is not None and ratio >= 1.0
        self._high = self._high + 1 if high else 0
        self.phase = self._next(prev, rho, growing, ratio, high)
        self._since_decay = 0 if self.phase == Phase.V_DECAY else self._since_decay + 1
        return PhaseUpdate(self.phase, prev, self.rho_trend)

    def _base(self, rho: float) -> Phase:
        decaying = rho < self.rho_decay or (
            rho < self.rho_watch and self.rho_trend < -self.trend_eps
        )
        return Phase.V_DECAY if decaying else Phase.STABLE

    def _next(self, s: Phase, rho: float, growing: bool, ratio: float | None,
              high: bool) -> Phase:
        if s in (Phase.STABLE, Phase.V_DECAY, Phase.RECOVERY) and self._high >= self.onset_updates:
            return Phase.ONSET
        if s == Phase.ONSET:
            if growing:
                return Phase.V_GROWTH
            return Phase.ONSET if high else self._enter_recovery()
        if s == Phase.V_GROWTH:
            return Phase.V_GROWTH if high or (ratio is None and growing) else self._enter_recovery()
        if s == Phase.RECOVERY:
            self._calm += 1
            return Phase.RECOVERY if self._calm < self.recovery_updates else self._base(rho)
        if ratio is None and growing and rho > 1.0 and self._since_decay <= self.decay_memory:
            return Phase.V_GROWTH
        return self._base(rho)

    def _enter_recovery(self) -> Phase:
        self._calm = 0
        return Phase.RECOVERY
