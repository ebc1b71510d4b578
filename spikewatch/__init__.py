"""spikewatch: predict a PyTorch training run's loss spikes before they happen.

    import spikewatch

    monitor = spikewatch.attach(model, optimizer, run="my-run", endpoint="tcp://127.0.0.1:5557")
    for batch in loader:
        ...
        optimizer.step()
        monitor.log(loss=loss)
    monitor.close()

This is the whole user API: `attach`, the `Monitor` it returns and the `Guard` policy (torch
is imported on first use, so the server installs and runs without it), with one submodule,
`spikewatch.trackers`, for `attach(..., trackers=[...])`. The parts live in
subpackages, each importing only the ones listed before it (docs/architecture.md):

- `spikewatch.protocol`: the wire format and the metric vocabulary, shared by both sides;
- `spikewatch.monitor`: the signal library (the math, on tensors);
- `spikewatch.agent`: the in-process agent (hooks, scheduler, transport);
- `spikewatch.server`: the daemon (`pip install 'spikewatch[server]'`) and the CLI;
- `spikewatch.migrations`: the SQL schema's Alembic migrations.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

__all__ = ["Guard", "Monitor", "__version__", "attach"]

try:
    __version__ = version("spikewatch")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from spikewatch.agent._attach import attach
    from spikewatch.agent._guard import Guard
    from spikewatch.agent._monitor import Monitor


def __getattr__(name: str) -> Any:
    if name in ("Monitor", "attach"):
        from spikewatch.agent import _attach

        return _attach.attach if name == "attach" else _attach.Monitor
    if name == "Guard":
        from spikewatch.agent._guard import Guard

        return Guard
    if name == "trackers":  # the submodule, without `import spikewatch.trackers` first
        import importlib

        return importlib.import_module("spikewatch.trackers")
    raise AttributeError(f"module 'spikewatch' has no attribute {name!r}")
