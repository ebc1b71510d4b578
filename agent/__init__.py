"""The in-process agent: attach to a PyTorch training job and stream instability signals.

Users call `spikewatch.attach`; this package is its implementation. `attach` and the
integrations load torch lazily on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Monitor", "attach"]

if TYPE_CHECKING:
    from spikewatch.agent._attach import attach
    from spikewatch.agent._monitor import Monitor


def __getattr__(name: str) -> Any:
    if name in __all__:
        from spikewatch.agent import _attach

        return _attach.attach if name == "attach" else _attach.Monitor
    raise AttributeError(f"module 'spikewatch.agent' has no attribute {name!r}")
