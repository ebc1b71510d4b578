"""spikewatch agent: attach to a PyTorch training job and stream instability signals.

    import agent
    monitor = agent.attach(model, optimizer, run="my-run", endpoint="tcp://127.0.0.1:5557")

The wire format (`agent.wire`) and metric vocabulary (`agent.names`) import without torch, so the
server can use them; `attach` and the integrations load torch lazily on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Monitor", "attach"]

if TYPE_CHECKING:
    from agent._monitor import Monitor, attach


def __getattr__(name: str) -> Any:
    if name in __all__:
        from agent import _monitor

        return getattr(_monitor, name)
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
