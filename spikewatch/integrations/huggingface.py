"""Hugging Face: `SpikewatchCallback` for ``transformers.Trainer``
(`spikewatch.agent.integrations.huggingface` says how it works)."""

from spikewatch.agent.integrations.huggingface import SpikewatchCallback

__all__ = ["SpikewatchCallback"]
