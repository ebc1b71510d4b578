"""Encoding of non-finite floats and JSON documents for SQL columns.

SQLite stores NaN as NULL, so a float column is paired with a small marker column:
0 finite (value in the float column), 1 NaN, 2 +Inf, 3 -Inf (float column NULL).
JSON columns are text written with Python's json, which keeps NaN/Infinity tokens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

FINITE, NAN, POS_INF, NEG_INF = 0, 1, 2, 3
_DECODE = {NAN: math.nan, POS_INF: math.inf, NEG_INF: -math.inf}


def enc(x: float) -> tuple[float | None, int]:
    """Split a float into (finite value or None, marker)."""
    if math.isfinite(x):
        return x, FINITE
    if math.isnan(x):
        return None, NAN
    return None, POS_INF if x > 0 else NEG_INF


def dec(value: float | None, nf: int) -> float:
    """Join a (value, marker) pair back into a float."""
    if nf == FINITE and value is not None:
        return float(value)
    return _DECODE.get(nf, math.nan)


def dumps(doc: Mapping[str, Any] | list[Any]) -> str:
    """Serialise a JSON column (non-finite floats kept as NaN/Infinity tokens)."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def loads(text: str | None) -> Any:
    """Parse a JSON column; empty means an empty object."""
    return json.loads(text) if text else {}
