"""The model at inference: backbones and weights, preprocessing, runtimes, the encoder, feature cache and bundle.

Importing it never imports torch; only `heads.py` (the heads' torch definition) and the torch runtime do."""
