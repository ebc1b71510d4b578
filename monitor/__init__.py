"""spikewatch signal library: estimators of training instability over tensors. No I/O."""
