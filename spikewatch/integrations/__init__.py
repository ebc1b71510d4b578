"""The framework integrations under their public names (implemented in
`spikewatch.agent.integrations`):

    from spikewatch.integrations.lightning import SpikewatchCallback, attach_fabric
    from spikewatch.integrations.huggingface import SpikewatchCallback

Each module imports its framework only when it is imported itself.
"""
