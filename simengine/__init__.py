"""simengine: image similarity with a triplet-trained embedding, a BCE pair verifier and a FAISS + SQLite index.

The public face (imported on first use, so that `import simengine` stays light and never imports torch; `dir()`,
`help()` and type checkers see every name):

    Engine                          answer pair, triplet and neighbour questions (query/)
    build_index                     the whole `simengine index build` job, for any source (index/)
    Index, verify_index             read an index snapshot; check one without writing (index/)
    add_images, remove_items, recalibrate_index, compact_index, collect_garbage, sync_index
    calibrate_with_examples         an index's thresholds from a few labelled pairs or images (index/)
    build_from_embeddings           an index from embedding shards within a memory budget (index/)
    scan_source                     the items of a folder, list or table (data/)
    find_duplicates, dedup_collection   duplicate groups; the whole `simengine dedup` job (dedup/)
    find_label_errors, find_outliers, representative_sample   curating an index's items (curation/)
    index_map                       the web app's map: a 2-D projection of an index, kept per version (curation/)
    move_index_duplicates           move reviewed duplicates aside and out of the index (index/)
    create_app, serve               the HTTP service and its web app (service/)
    load_bundle, Encoder            the model (model/)
    builtin_model_dir               the built-in model, prepared once into the cache (no training, offline)
    quantize_model                  the whole `simengine quantize` job: an int8 backbone and its accuracy gate
    embed_collection                embeddings of a collection as shards, locally or on Ray (shards/)
    train_model                     train both heads into a bundle (training/, imports torch)
    StoreReader, StoreWriter        the versioned vector store under every index, with no model (store/)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from simengine.curation.label_errors import find_label_errors
    from simengine.curation.outliers import find_outliers
    from simengine.curation.projection import index_map
    from simengine.curation.sample import representative_sample
    from simengine.data.sources import scan_source
    from simengine.dedup.find import find_duplicates
    from simengine.dedup.job import dedup_collection
    from simengine.index.build import build_index
    from simengine.index.duplicates import move_index_duplicates
    from simengine.index.from_embeddings import build_from_embeddings
    from simengine.index.reader import Index
    from simengine.index.sync import sync_index
    from simengine.index.update import (
        add_images, calibrate_with_examples, collect_garbage, compact_index, recalibrate_index, remove_items,
    )
    from simengine.index.verify import verify_index
    from simengine.model.builtin import builtin_model_dir
    from simengine.model.bundle import load_bundle
    from simengine.model.encoder import Encoder
    from simengine.model.int8 import quantize_model
    from simengine.query.engine import Engine
    from simengine.service.app import create_app, serve
    from simengine.shards.embed import embed_collection
    from simengine.store.reader import StoreReader
    from simengine.store.writer import StoreWriter
    from simengine.training.pipeline import train_model

_EXPORTS = {
    "Engine": "simengine.query.engine",
    "build_index": "simengine.index.build",
    "Index": "simengine.index.reader",
    "verify_index": "simengine.index.verify",
    "add_images": "simengine.index.update",
    "remove_items": "simengine.index.update",
    "recalibrate_index": "simengine.index.update",
    "calibrate_with_examples": "simengine.index.update",
    "compact_index": "simengine.index.update",
    "collect_garbage": "simengine.index.update",
    "sync_index": "simengine.index.sync",
    "build_from_embeddings": "simengine.index.from_embeddings",
    "scan_source": "simengine.data.sources",
    "find_duplicates": "simengine.dedup.find",
    "dedup_collection": "simengine.dedup.job",
    "find_label_errors": "simengine.curation.label_errors",
    "find_outliers": "simengine.curation.outliers",
    "representative_sample": "simengine.curation.sample",
    "index_map": "simengine.curation.projection",
    "move_index_duplicates": "simengine.index.duplicates",
    "create_app": "simengine.service.app",
    "serve": "simengine.service.app",
    "load_bundle": "simengine.model.bundle",
    "builtin_model_dir": "simengine.model.builtin",
    "Encoder": "simengine.model.encoder",
    "quantize_model": "simengine.model.int8",
    "embed_collection": "simengine.shards.embed",
    "train_model": "simengine.training.pipeline",
    "StoreReader": "simengine.store.reader",
    "StoreWriter": "simengine.store.writer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'simengine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
