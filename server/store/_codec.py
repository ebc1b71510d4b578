"""Encoding of non-finite floats and JSON documents for SQL columns.

SQLite stores NaN as NULL, so a float column is paired with a small marker column:
0 finite (value in the float column), else the `spikewatch.protocol.nonfinite` kind's stored code
(1 NaN, 2 +Inf, 3 -Inf; float column NULL). The codes are the schema's: never renumber them.
JSON columns are text written with Python's json, which keeps NaN/Infinity tokens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from spikewatch.protocol.nonfinite import NonFinite

FINITE: Final = 0
MARKER: Final[dict[NonFinite, int]] = {NonFinite.NAN: 1, NonFinite.POS_INF: 2,
                                       NonFinite.NEG_INF: 3}
"""The stored code of each non-finite kind."""
_KIND: Final = {code: kind for kind, code in MARKER.items()}


def enc(x: float) -> tuple[float | None, int]:
    """Split a float into (finite value or None, marker)."""
    kind = NonFinite.of(x)
    return (x, FINITE) if kind is None else (None, MARKER[kind])


def dec(value: float | None, nf: int) -> float:
    """Join a (value, marker) pair back into a float (an unknown marker reads as NaN)."""
    if nf == FINITE and value is not None:
        return float(value)
    return _KIND.get(nf, NonFinite.NAN).number


def dumps(doc: Mapping[str, Any] | list[Any]) -> str:
    """Serialise a JSON column (non-finite floats kept as NaN/Infinity tokens)."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def loads(text: str | None) -> Any:
    """Parse a JSON column; empty means an empty object."""
    return json.loads(text) if text else {}
