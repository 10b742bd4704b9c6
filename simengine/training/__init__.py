"""Training (imports torch): the heads' fitting loop, triplet miners, the P×K sampler, fine-tuning, `train_model`."""
