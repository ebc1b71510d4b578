"""`untraced`: keep agent code out of TorchDynamo's graphs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch

F = TypeVar("F", bound=Callable[..., Any])


def untraced(fn: F) -> F:
    """`fn` hidden from TorchDynamo: compiled code calls it eagerly at a graph break instead of
    tracing it (and everything it calls) into the user's graph. Costs ~0.4 µs per eager call."""
    return cast(F, torch.compiler.disable(fn))  # type: ignore[no-untyped-call]
