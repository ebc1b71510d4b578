"""Framework integrations: a Lightning `Callback`, a Fabric helper and a Hugging Face
`TrainerCallback` (public names: `spikewatch.integrations.lightning` / `.huggingface`).

    from spikewatch.integrations.lightning import SpikewatchCallback    # lightning.Trainer
    from spikewatch.integrations.lightning import attach_fabric         # lightning.Fabric
    from spikewatch.integrations.huggingface import SpikewatchCallback  # transformers.Trainer

No other code is needed: each attaches when training starts (every optimizer, no closure: the
zero-extra-pass predictor), logs the loss of every optimizer step as the trainer computed it
(undivided under gradient accumulation, label smoothing included), names the run after the
trainer's run (one name for all ranks), finds the output module for the over-confidence probe,
and closes the monitor when training ends. They take the keyword arguments of `agent.attach` (or
the SPIKEWATCH_* variables), which win. Each module imports its framework only when imported.
"""
