"""The condition kinds of a rule file, as pydantic models: a union told apart by its one key.

    {metric: M, op: ">=", value: 1.0[, stale_steps: N][, absent_is: false]}
    {rate: M, window_steps: 50[, mode: per_step][, min_points: 1], op: ">", value: 2.0 ...}
    {event: momentum_jump[, where: {rescaled: false}]}
    {nonfinite: M[, stale_steps: N][, absent_is: false]}
    {all: [condition, ...]}   {any: [condition, ...]}   (nested at most MAX_DEPTH deep)

The metric names a leaf may read come from the validation context (`{"metrics": names}`; the
protocol's catalogue without one). A leaf without `stale_steps` gets the rule's (`inherit_stale`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from spikewatch.protocol import wire
from spikewatch.protocol.messages import Scalar
from spikewatch.protocol.names import BY_NAME, EventType

Op: TypeAlias = Literal[">", ">=", "<", "<="]

MAX_DEPTH: Final = 4  # nesting of all/any
MAX_CHILDREN: Final = 16
DEFAULT_STALE_STEPS: Final = 50
# a rule, metric or label name; a rule's name travels to the agents in alert replies, so it is
# the wire's definition
NAME_PATTERN: Final = wire.RULE_RE.pattern
KEY_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$"  # an event data key

StaleSteps: TypeAlias = Annotated[int, Field(ge=0, le=1_000_000)]
_STALE_STEPS: Final = TypeAdapter(StaleSteps)


def did_you_mean(word: object, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known word, else ''."""
    close = difflib.get_close_matches(str(word), sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Strict(BaseModel):
    """Frozen, no type coercion, and an unknown key is an error that suggests the known one."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            allowed = sorted(f.alias or name for name, f in cls.model_fields.items())
            for key in data:
                if key not in allowed:
                    hint = did_you_mean(key, allowed) or f" (allowed: {', '.join(allowed)})"
                    raise PydanticCustomError("unknown_key", "unknown key {key}{hint}",
                                              {"key": repr(key), "hint": hint, "field": str(key)})
        return data


class RateMode(StrEnum):
    """How `rate` compares the current value with the window of previous steps."""

    PER_STEP = "per_step"  # (x_now − x_oldest) / (steps between)
    RATIO_TO_MIN = "ratio_to_min"  # x_now / min(window)
    RATIO_TO_MAX = "ratio_to_max"  # x_now / max(window)
    RATIO_TO_MEAN = "ratio_to_mean"  # x_now / mean(window)


class MetricCondition(Strict):
    """A condition on one metric's value; absent (older than `stale_steps`) means `absent_is`."""

    kind: ClassVar[str]
    metric: str
    stale_steps: StaleSteps = DEFAULT_STALE_STEPS
    absent_is: bool = False

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, name: str, info: ValidationInfo) -> str:
        known = (info.context or {}).get("metrics", BY_NAME)
        if name not in known:
            raise PydanticCustomError(
                "unknown_metric", "unknown metric {name}{hint} (declare custom ones in "
                "extra_metrics)", {"name": repr(name), "hint": did_you_mean(name, known)})
        return name


class Threshold(MetricCondition):
    """`metric op value` on the current (or carried-over) value of a metric."""

    kind: ClassVar[str] = "metric"
    op: Op
    value: float = Field(allow_inf_nan=False)


class Rate(MetricCondition):
    """Change per step, or ratio to the min/max/mean, over the previous `window_steps` steps."""

    kind: ClassVar[str] = "rate"
    metric: str = Field(alias="rate")
    window_steps: int = Field(ge=1, le=10_000)
    mode: RateMode = Field(RateMode.PER_STEP, strict=False)
    op: Op
    value: float = Field(allow_inf_nan=False)
    min_points: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _points_fit_the_window(self) -> Rate:
        if self.min_points > self.window_steps:
            raise PydanticCustomError(
                "too_many_points", "must be at most window_steps ({window}), got {points}",
                {"window": self.window_steps, "points": self.min_points, "field": "min_points"})
        return self


class NonFinite(MetricCondition):
    """The metric's value is NaN or ±Inf."""

    kind: ClassVar[str] = "nonfinite"
    metric: str = Field(alias="nonfinite")


def _one_scalar(value: object, handler: Any) -> Any:
    """A data value is null, a boolean, a number or a string: one error, not one per type."""
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError("scalar", "must be null, true/false, a number or a string "
                                  "(got {got})", {"got": repr(value)[:60]}) from None


class EventSeen(Strict):
    """An event of this type at the observed step, optionally with data equal to `where`."""

    kind: ClassVar[str] = "event"
    event: EventType = Field(strict=False)
    where: dict[Annotated[str, Field(pattern=KEY_PATTERN)],
                Annotated[Scalar, WrapValidator(_one_scalar)]] = Field(default_factory=dict)


class AllOf(Strict):
    """Every child condition holds."""

    kind: ClassVar[str] = "all"
    conditions: list[Condition] = Field(alias="all", min_length=1, max_length=MAX_CHILDREN)


class AnyOf(Strict):
    """At least one child condition holds."""

    kind: ClassVar[str] = "any"
    conditions: list[Condition] = Field(alias="any", min_length=1, max_length=MAX_CHILDREN)


_KINDS: Final = ("metric", "rate", "event", "nonfinite", "all", "any")


def _kind(raw: Any) -> str | None:
    """The key that says which kind a condition is (None: none or several)."""
    if isinstance(raw, BaseModel):
        return getattr(raw, "kind", None)
    present = [k for k in _KINDS if isinstance(raw, Mapping) and k in raw]
    return present[0] if len(present) == 1 else None


Condition: TypeAlias = Annotated[
    Annotated[Threshold, Tag("metric")] | Annotated[Rate, Tag("rate")]
    | Annotated[EventSeen, Tag("event")] | Annotated[NonFinite, Tag("nonfinite")]
    | Annotated[AllOf, Tag("all")] | Annotated[AnyOf, Tag("any")],
    Discriminator(_kind, custom_error_type="condition_kind",
                  custom_error_message=f"needs exactly one of {', '.join(_KINDS)}"),
]
CONDITION_TAGS: Final = frozenset(_KINDS)  # the tags pydantic puts into an error's location
AllOf.model_rebuild()
AnyOf.model_rebuild()


def leaves(c: Condition) -> list[Condition]:
    """The leaf conditions under `c` (itself when it is one)."""
    if isinstance(c, AllOf | AnyOf):
        return [leaf for child in c.conditions for leaf in leaves(child)]
    return [c]


def depth(c: Condition) -> int:
    """How many all/any levels `c` nests."""
    if isinstance(c, AllOf | AnyOf):
        return 1 + max(depth(child) for child in c.conditions)
    return 0


def inherit_stale(raw: object, stale_steps: object) -> object:
    """A raw condition whose metric leaves without `stale_steps` take the rule's (when valid)."""
    try:
        stale = _STALE_STEPS.validate_python(stale_steps, strict=True)
    except ValidationError:
        return raw  # the rule's own field reports it
    if not isinstance(raw, Mapping):
        return raw
    for key in ("all", "any"):
        if isinstance(raw.get(key), list):
            return {**raw, key: [inherit_stale(child, stale) for child in raw[key]]}
    if _kind(raw) in ("metric", "rate", "nonfinite") and "stale_steps" not in raw:
        return {**raw, "stale_steps": stale}
    return raw
