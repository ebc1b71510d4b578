"""Framework integrations: a Lightning `Callback` and a Hugging Face `TrainerCallback`.

    from spikewatch.agent.integrations.lightning import SpikewatchCallback    # Lightning
    from spikewatch.agent.integrations.huggingface import SpikewatchCallback  # transformers.Trainer

Both take the keyword arguments of `agent.attach` (or the SPIKEWATCH_* environment variables),
attach when training starts, log the training loss after every optimizer step and close the
monitor when training ends or fails. Each module imports its framework only when imported itself.
"""
