"""Reactive spike and non-finite detection on drained per-step values (loss, grad norm).

The last line of defence and the ground truth for backtests. It runs on Python floats after the
agent drained them, never on the hot path. Prior-art rules as presets:

- MEGATRON: value ≥ 10× the max of the first 100 finite values (Megatron-LM's loss check).
- LLM_FOUNDRY: value ≥ 2× the running mean of the last 100 non-outlier values for more than 4
  consecutive steps (llm-foundry's loss-spike callback: outlier multiplier 2, patience 4).
- OLMO_CORE: value ≥ mean + 6σ of the previous 128 non-outlier values (OLMo-core's z-score check).

NaN/±Inf are reported as non-finite and never enter the statistics; outliers do not inflate the
baseline. σ is floored at 1e-6·|mean| so a perfectly flat window does not fire on rounding noise.
Nothing here raises on a numeric value.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import SupportsFloat

__all__ = ["Detection", "Kind", "Mode", "Preset", "ReactiveDetector", "Rule", "detect"]


class Kind(StrEnum):
    NONFINITE = "nonfinite"
    SPIKE = "spike"


class Preset(StrEnum):
    MEGATRON = "megatron"
    LLM_FOUNDRY = "llm_foundry"
    OLMO_CORE = "olmo_core"


class Mode(StrEnum):
    """What a rule compares each value with (`Rule.factor` times it)."""

    MAX_OF_FIRST = "max_of_first"  # the largest of the first `window` finite values
    RUNNING_MEAN = "running_mean"  # the mean of the last `window` non-outliers, for > patience
    ZSCORE = "zscore"  # mean + factor·σ of the last `window` non-outliers


@dataclass(frozen=True, slots=True)
class Rule:
    """A reactive rule (a `Mode` or its string value)."""

    name: str
    mode: Mode | str
    factor: float  # multiple (max_of_first, running_mean) or number of σ (zscore)
    window: int  # first-N steps, running-mean window or z-score window
    patience: int = 0  # fire when more than `patience` consecutive steps exceed (running_mean)


_REL_STD_FLOOR = 1e-6

RULES: dict[Preset, Rule] = {
    Preset.MEGATRON: Rule("megatron", Mode.MAX_OF_FIRST, 10.0, 100),
    Preset.LLM_FOUNDRY: Rule("llm_foundry", Mode.RUNNING_MEAN, 2.0, 100, patience=4),
    Preset.OLMO_CORE: Rule("olmo_core", Mode.ZSCORE, 6.0, 128),
}


@dataclass(frozen=True, slots=True)
class Detection:
    """Something a rule saw at `step`; `threshold` is the level the value crossed (NaN if none)."""

    step: int
    kind: Kind
    rule: str
    value: float
    threshold: float


class ReactiveDetector:
    """One rule over one series. Feed it `update(step, value)` in step order."""

    def __init__(self, rule: Rule | Preset | str = Preset.OLMO_CORE) -> None:
        if isinstance(rule, str) and not isinstance(rule, Preset):
            try:
                rule = Preset(rule)
            except ValueError:
                known = [p.value for p in Preset]
                raise ValueError(f"unknown preset {rule!r}; one of {known}") from None
        self.rule = RULES[rule] if isinstance(rule, Preset) else rule
        try:
            self._mode = Mode(self.rule.mode)
        except ValueError:
            raise ValueError(f"unknown rule mode {self.rule.mode!r}") from None
        if self.rule.window < 1 or self.rule.factor <= 0:
            raise ValueError("rule window must be >= 1 and factor > 0")
        self._first_max = -math.inf
        self._first_n = 0
        self._window: deque[float] = deque(maxlen=self.rule.window)
        self._over = 0
        # z-score: Σ(x−shift) and Σ(x−shift)² over the window, updated in O(1) per value and
        # recomputed about the window's mean once per window length (bounded rounding drift)
        self._shift = 0.0
        self._s1 = 0.0
        self._s2 = 0.0
        self._since_exact = 0

    def update(self, step: int, value: SupportsFloat) -> Detection | None:
        """Feed one value; returns a Detection when the rule fires (or the value is non-finite)."""
        try:
            x = float(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"step {step}: value {value!r} is not a number") from exc
        if not math.isfinite(x):
            return Detection(step, Kind.NONFINITE, self.rule.name, x, math.nan)
        if self._mode is Mode.MAX_OF_FIRST:
            return self._max_of_first(step, x)
        if self._mode is Mode.RUNNING_MEAN:
            return self._running_mean(step, x)
        return self._zscore(step, x)

    def _max_of_first(self, step: int, x: float) -> Detection | None:
        if self._first_n < self.rule.window:
            self._first_n += 1
            self._first_max = max(self._first_max, x)
            return None
        threshold = self.rule.factor * self._first_max
        return Detection(step, Kind.SPIKE, self.rule.name, x, threshold) if x >= threshold else None

    def _running_mean(self, step: int, x: float) -> Detection | None:
        if not self._window:
            self._window.append(x)
            return None
        threshold = self.rule.factor * (sum(self._window) / len(self._window))
        if x >= threshold:
            self._over += 1
            if self._over > self.rule.patience:
                return Detection(step, Kind.SPIKE, self.rule.name, x, threshold)
            return None
        self._over = 0
        self._window.append(x)
        return None

    def _zscore(self, step: int, x: float) -> Detection | None:
        w = self._window
        n = len(w)
        if n == w.maxlen:
            d = self._s1 / n
            mean = self._shift + d
            std = math.sqrt(max(self._s2 / n - d * d, 0.0))
            std = max(std, _REL_STD_FLOOR * abs(mean))  # a flat window must not fire on noise
            threshold = mean + self.rule.factor * std
            if x >= threshold and x > mean:
                return Detection(step, Kind.SPIKE, self.rule.name, x, threshold)
            old = w[0] - self._shift
            self._s1 -= old
            self._s2 -= old * old
        w.append(x)
        d = x - self._shift
        self._s1 += d
        self._s2 += d * d
        self._since_exact += 1
        if self._since_exact >= len(w):
            self._shift = sum(w) / len(w)
            self._s1 = math.fsum(v - self._shift for v in w)
            self._s2 = math.fsum((v - self._shift) ** 2 for v in w)
            self._since_exact = 0
        return None


def detect(values: list[tuple[int, float]], rule: Rule | Preset | str) -> list[Detection]:
    """Run one rule over a whole (step, value) series, e.g. for a backtest."""
    det = ReactiveDetector(rule)
    return [d for s, v in values if (d := det.update(s, v)) is not None]
