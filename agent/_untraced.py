"""`untraced`: keep agent code out of TorchDynamo's graphs at almost no cost to eager calls."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch

F = TypeVar("F", bound=Callable[..., Any])

_dynamo_callback: Callable[[], object]
try:  # Dynamo's frame hook: set while any code runs under torch.compile, graph breaks included
    from torch._C._dynamo import eval_frame as _eval_frame

    _dynamo_callback = _eval_frame.get_eval_frame_callback
except ImportError:  # pragma: no cover - a torch without Dynamo's C hook: always hide
    _dynamo_callback = object  # never None


def untraced(fn: F) -> F:
    """`fn` hidden from TorchDynamo: compiled code calls it eagerly at a graph break instead of
    tracing it (and everything it calls) into the user's graph.

    torch.compiler.disable's wrapper swaps Dynamo's frame hook on every call (~0.4 µs); this one
    does so only under torch.compile: while Dynamo traces (`is_compiling()`, which it folds to
    True) or runs the eager remainder of a compiled function (its frame hook is set).
    """
    hidden = torch.compiler.disable(fn)  # type: ignore[no-untyped-call]
    is_compiling = torch.compiler.is_compiling

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if is_compiling() or _dynamo_callback() is not None:
            return hidden(*args, **kwargs)
        return fn(*args, **kwargs)

    return cast(F, call)
