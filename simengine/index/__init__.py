"""Indexes: a store (store/) whose vectors were embedded by a model bundle it carries, with calibrated thresholds.

build (one entry for every kind of source), update (add, remove, recalibrate, compact, gc), sync, calibrate,
from_embeddings (an index from embedding shards within a memory budget), reader (`Index`), verify (the store's
checks plus the model's). Nothing here imports torch until a model must embed images.
"""
