"""Explicit NaN/Inf in JSON: JSON has no non-finite numbers, so they travel as strings.

A float field is a number when finite and one of the strings "NaN", "Infinity", "-Infinity"
otherwise (the names JavaScript's `Number()` and Python's `float()` both parse). Nothing is turned
into null and nothing raises: a blow-up is data. `JsonFloat` carries the rule into the response
models and their OpenAPI schema; `jsonable` applies it to free-form values (metadata, event data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

NAN: Final = "NaN"
POS_INF: Final = "Infinity"
NEG_INF: Final = "-Infinity"
NONFINITE: Final = (NAN, POS_INF, NEG_INF)

FLOAT_DOC: Final = (
    'A number, or one of the strings "NaN", "Infinity", "-Infinity" for non-finite values '
    "(JSON has no NaN/Inf)."
)
FLOAT_SCHEMA: Final[dict[str, Any]] = {
    "anyOf": [{"type": "number"}, {"type": "string", "enum": list(NONFINITE)}],
    "description": FLOAT_DOC,
}
_FROM_STR: Final = {NAN: math.nan, POS_INF: math.inf, NEG_INF: -math.inf,
                    "nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def to_json_float(x: float) -> float | str:
    """A finite float as itself, a non-finite one as its string name."""
    if math.isfinite(x):
        return x
    return NAN if math.isnan(x) else (POS_INF if x > 0 else NEG_INF)


def from_json_float(x: Any) -> float:
    """Inverse of `to_json_float` (also accepts the wire format's "nan"/"inf"/"-inf")."""
    if isinstance(x, str):
        if x in _FROM_STR:
            return _FROM_STR[x]
        raise ValueError(f"not a number or non-finite name: {x[:40]!r}")
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ValueError(f"not a number: {type(x).__name__}")
    return float(x)


def _parse(x: Any) -> Any:
    return from_json_float(x) if isinstance(x, str) and x in _FROM_STR else x


JsonFloat = Annotated[
    float,
    BeforeValidator(_parse),
    PlainSerializer(to_json_float, return_type=Any, when_used="json"),
    WithJsonSchema(FLOAT_SCHEMA),
]
"""A float that survives JSON: use it for every float field of a response model."""


def jsonable(x: Any) -> Any:
    """Make a free-form value JSON-safe: non-finite floats become strings, containers recurse."""
    if isinstance(x, float):
        return to_json_float(x)
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    return x


JsonObject = Annotated[
    dict[str, Any],
    PlainSerializer(jsonable, return_type=Any, when_used="json"),
    WithJsonSchema({"type": "object", "additionalProperties": True,
                    "description": "Free-form scalars; non-finite floats as strings."}),
]
"""A free-form object (run metadata, event data) whose floats follow the `JsonFloat` rule."""

