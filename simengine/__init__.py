"""simengine: image similarity with a triplet-trained embedding, a BCE pair verifier and a FAISS + SQLite index.

The public face, imported lazily so that `import simengine` stays light (and never imports torch):

    Engine                          answer pair, triplet and neighbour questions (query/)
    Index, verify_index             read an index snapshot; check one without writing (index/)
    build_index, add_images, remove_items, recalibrate_index, compact_index, collect_garbage, sync_index
    scan_source                     the items of a folder, list or table (data/)
    build_index_from_source         the whole `simengine index build` job
    find_duplicates, dedup_collection   duplicate groups (dedup/); the whole `simengine dedup` job
    load_bundle, Encoder            the model (model/)
    quantize_model                  the whole `simengine quantize` job: an int8 backbone and its accuracy gate
    embed_collection                embeddings of a collection as shards, locally or on Ray (shards/)
    build_from_embeddings           an index from those shards within a memory budget (index/)
    train_model                     train both heads into a bundle (training/, imports torch)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "Engine": "simengine.query.engine",
    "Index": "simengine.index.reader",
    "verify_index": "simengine.index.verify",
    "build_index": "simengine.index.build",
    "add_images": "simengine.index.update",
    "remove_items": "simengine.index.update",
    "recalibrate_index": "simengine.index.update",
    "compact_index": "simengine.index.update",
    "collect_garbage": "simengine.index.update",
    "sync_index": "simengine.index.sync",
    "scan_source": "simengine.data.sources",
    "build_index_from_source": "simengine.workflows",
    "find_duplicates": "simengine.dedup.find",
    "dedup_collection": "simengine.workflows",
    "load_bundle": "simengine.model.bundle",
    "Encoder": "simengine.model.encoder",
    "quantize_model": "simengine.workflows",
    "embed_collection": "simengine.shards.embed",
    "build_from_embeddings": "simengine.index.from_embeddings",
    "train_model": "simengine.training.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'simengine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
