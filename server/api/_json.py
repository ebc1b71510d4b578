"""Explicit NaN/Inf in JSON: JSON has no non-finite numbers, so they travel as strings.

A float field is a number when finite and one of the strings "NaN", "Infinity", "-Infinity"
otherwise (`spikewatch.protocol.nonfinite`, the one definition). Nothing is turned
into null and nothing raises: a blow-up is data. `JsonFloat` carries the rule into the response
models and their OpenAPI schema; `jsonable` applies it to free-form values (metadata, event data).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

from spikewatch.protocol.nonfinite import JSON_NAMES, from_json, to_json

FLOAT_DOC: Final = (
    'A number, or one of the strings "NaN", "Infinity", "-Infinity" for non-finite values '
    "(JSON has no NaN/Inf)."
)
FLOAT_SCHEMA: Final[dict[str, Any]] = {
    "anyOf": [{"type": "number"}, {"type": "string", "enum": list(JSON_NAMES)}],
    "description": FLOAT_DOC,
}


def from_json_float(x: Any) -> float:
    """A JSON float field's value: a number, or a non-finite name ("NaN", "Infinity",
    "-Infinity", or the wire format's "nan"/"inf"/"-inf")."""
    if isinstance(x, str):
        value = from_json(x)
        if value is None:
            raise ValueError(f"not a number or non-finite name: {x[:40]!r}")
        return value
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ValueError(f"not a number: {type(x).__name__}")
    return float(x)


def _parse(x: Any) -> Any:
    value = from_json(x) if isinstance(x, str) else None
    return x if value is None else value


JsonFloat = Annotated[
    float,
    BeforeValidator(_parse),
    PlainSerializer(to_json, return_type=Any, when_used="json"),
    WithJsonSchema(FLOAT_SCHEMA),
]
"""A float that survives JSON: use it for every float field of a response model."""


def jsonable(x: Any) -> Any:
    """Make a free-form value JSON-safe: non-finite floats become strings, containers recurse."""
    if isinstance(x, float):
        return to_json(x)
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

