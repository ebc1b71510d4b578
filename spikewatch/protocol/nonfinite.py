"""Non-finite floats, defined once: JSON has no NaN or ±Inf, so they travel as strings.

A non-finite float is one of the three `NonFinite` kinds. Its JSON name (the member's value) is
"NaN", "Infinity" or "-Infinity", the names JavaScript's `Number()` and Python's `float()` both
parse: the HTTP API, the webhook and the report's API reader use them. The agent wire format
(version 1) spells the same kinds "nan", "inf" and "-inf" (`wire_name`); that spelling is kept so
agents and servers of different releases keep understanding each other. The SQL store keeps its own
integer marker per kind (a column type forces it) and maps it through these kinds.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Final


class NonFinite(Enum):
    """NaN, +Inf or -Inf; the value is the JSON name."""

    NAN = "NaN"
    POS_INF = "Infinity"
    NEG_INF = "-Infinity"

    @property
    def number(self) -> float:
        """The float itself."""
        return _NUMBER[self]

    @property
    def wire_name(self) -> str:
        """The spelling of the agent wire format."""
        return _WIRE_NAME[self]

    @classmethod
    def of(cls, x: float) -> NonFinite | None:
        """The kind of `x`; None when it is finite."""
        if math.isfinite(x):
            return None
        return cls.NAN if math.isnan(x) else cls.POS_INF if x > 0 else cls.NEG_INF


_NUMBER: Final = {NonFinite.NAN: math.nan, NonFinite.POS_INF: math.inf,
                  NonFinite.NEG_INF: -math.inf}
_WIRE_NAME: Final = {NonFinite.NAN: "nan", NonFinite.POS_INF: "inf", NonFinite.NEG_INF: "-inf"}

JSON_NAMES: Final = tuple(k.value for k in NonFinite)
"""The JSON names in a fixed order: "NaN", "Infinity", "-Infinity"."""
WIRE_NAMES: Final = tuple(_WIRE_NAME.values())
"""The wire spellings in the same order: "nan", "inf", "-inf"."""

_BY_WIRE_NAME: Final = {name: k for k, name in _WIRE_NAME.items()}
_BY_ANY_NAME: Final = {**_BY_WIRE_NAME, **{k.value: k for k in NonFinite}}


def to_json(x: float) -> float | str:
    """A finite float as itself, a non-finite one as its JSON name."""
    kind = NonFinite.of(x)
    return x if kind is None else kind.value


def to_wire(x: float) -> float | str:
    """A finite float as itself, a non-finite one as its wire spelling."""
    kind = NonFinite.of(x)
    return x if kind is None else kind.wire_name


def from_json(name: str) -> float | None:
    """The float a JSON name or a wire spelling stands for; None for any other string."""
    kind = _BY_ANY_NAME.get(name)
    return None if kind is None else kind.number


def from_wire(name: str) -> float | None:
    """The float a wire spelling stands for; None for any other string (a JSON name included:
    on the wire "NaN" in free-form data is text)."""
    kind = _BY_WIRE_NAME.get(name)
    return None if kind is None else kind.number
