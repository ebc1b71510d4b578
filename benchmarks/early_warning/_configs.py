"""Named agent configurations the benchmark can measure.

The default is what a user writes: `agent.attach(model, optimizer, run=..., endpoint=...)`, no
closure, every other option at the library default. Anything else is opt-in and named next to
every number it produced (DESIGN.md: a benchmark that switches a limit off measures a different
product).

A configuration name is `default`, or dash-separated parts in this order:

    closure[-auto|-exact|-fd] | noclosure     pass Task.closure (with that curvature) or not
    [light|default|full]                      the agent profile (omitted: library default)
    [BUDGET | inf]                            overhead_budget (omitted: library default)

e.g. `closure-exact-full-inf` (the old benchmark: exact HVP, every probe every step, cadences
never stretched), `noclosure-full-inf` (the old "secant" estimator), `closure-fd`, `full`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

CURVATURES = ("auto", "exact", "fd")
PROFILES = ("light", "default", "full")
PRESETS = ("default", "closure-exact-full-inf", "closure-fd-full-inf", "noclosure-full-inf")
# the options a config leaves to the library can still come from the environment
_ENV = {"profile": "SPIKEWATCH_PROFILE", "budget": "SPIKEWATCH_OVERHEAD_BUDGET",
        "curvature": "SPIKEWATCH_CURVATURE"}  # fmt: skip


@dataclass(frozen=True)
class Config:
    """One way of attaching the agent. None = not passed to attach() (the library default)."""

    closure: bool = False
    curvature: str | None = None
    profile: str | None = None
    budget: float | None = None

    @property
    def name(self) -> str:
        """The canonical name (`parse(c.name) == c`)."""
        if self == Config():
            return "default"
        parts = ["closure" if self.closure else "noclosure"]
        if self.curvature is not None:
            parts.append(self.curvature)
        if self.profile is not None:
            parts.append(self.profile)
        if self.budget is not None:
            parts.append(_fmt_budget(self.budget))
        return "-".join(parts)

    def describe(self, env: dict[str, str] | None = None) -> str:
        """What was measured, in words: 'attach defaults, no closure' or the options passed."""
        env = dict(os.environ) if env is None else env
        if self == Config():
            text = "attach defaults, no closure"
        else:
            parts = [f"closure={self.curvature or 'auto'}" if self.closure else "no closure"]
            if self.profile is not None:
                parts.append(f"profile={self.profile}")
            if self.budget is not None:
                parts.append(f"budget={_fmt_budget(self.budget)}")
            unset = [k for k in ("profile", "budget") if getattr(self, k) is None]
            if unset:
                parts.append(f"{' and '.join(unset)} at the library default")
            text = ", ".join(parts)
        inherited = [f"{var}={env[var]}" for key, var in _ENV.items()
                     if getattr(self, key) is None and env.get(var, "").strip()]  # fmt: skip
        if env.get("SPIKEWATCH_DISABLED", "").strip():
            inherited.append(f"SPIKEWATCH_DISABLED={env['SPIKEWATCH_DISABLED']}")
        if inherited:
            text += f" (from the environment: {', '.join(inherited)})"
        return text

    def attach_kwargs(self, closure: Any) -> dict[str, Any]:
        """The keyword arguments beyond run/endpoint that this config passes to attach()."""
        kw: dict[str, Any] = {}
        if self.closure:
            kw["closure"] = closure
        if self.curvature is not None:
            kw["curvature"] = self.curvature
        if self.profile is not None:
            kw["profile"] = self.profile
        if self.budget is not None:
            kw["overhead_budget"] = self.budget
        return kw


def _fmt_budget(b: float) -> str:
    return "inf" if math.isinf(b) else f"{b:g}"


def _budget(text: str) -> float:
    try:
        b = float(text)
    except ValueError:
        raise KeyError(f"not a budget: {text!r}") from None
    if not b > 0:
        raise KeyError(f"a budget must be > 0 (or inf), got {text!r}")
    return b


def parse(name: str) -> Config:
    """The config a name describes; KeyError explaining the grammar otherwise."""
    name = name.strip()
    if name == "default":
        return Config()
    tokens = name.split("-")
    try:
        closure = {"closure": True, "noclosure": False}[tokens[0]]
    except KeyError:
        raise KeyError(f"config {name!r}: expected 'default' or a name starting with closure or "
                       f"noclosure, e.g. {', '.join(PRESETS)}") from None
    rest = tokens[1:]
    curvature = rest.pop(0) if rest and rest[0] in CURVATURES else None
    if curvature is not None and not closure:
        raise KeyError(f"config {name!r}: a curvature ({curvature}) needs the closure")
    profile = rest.pop(0) if rest and rest[0] in PROFILES else None
    budget = None
    if rest:
        try:
            budget = _budget(rest.pop(0))
        except KeyError as e:
            raise KeyError(f"config {name!r}: {e.args[0]}") from None
    if rest:
        raise KeyError(f"config {name!r}: unexpected {'-'.join(rest)!r} (parts: closure[-"
                       f"{'|'.join(CURVATURES)}]|noclosure, [{'|'.join(PROFILES)}], [budget|inf])")
    return Config(closure, curvature, profile, budget)


def from_options(closure: str | None, profile: str | None, budget: str | None) -> Config | None:
    """The config that --closure/--profile/--budget describe (None when none is given)."""
    if closure is None and profile is None and budget is None:
        return None
    if closure is not None and closure not in CURVATURES:
        raise KeyError(f"--closure {closure!r}: choose from {', '.join(CURVATURES)}")
    if profile is not None and profile not in PROFILES:
        raise KeyError(f"--profile {profile!r}: choose from {', '.join(PROFILES)}")
    return Config(closure is not None, closure, profile,
                  None if budget is None else _budget(budget))  # fmt: skip
