"""Training (imports torch): the heads' fitting loop, triplet miners, similarity distillation, the P×K sampler, the
backbone's ImageNet classifier (for the posterior part of the embedding), fine-tuning, `train_model`."""
