"""Lightning: `SpikewatchCallback` for ``lightning.Trainer``, `attach_fabric` for Fabric
(`spikewatch.agent.integrations.lightning` and `.fabric` say how each works)."""

from spikewatch.agent.integrations.fabric import attach_fabric
from spikewatch.agent.integrations.lightning import SpikewatchCallback

__all__ = ["SpikewatchCallback", "attach_fabric"]
