"""The out-of-sample neighbourhood of an index's items: each item's k nearest *other* items, never itself nor a copy of
it (the same content hash), so that nothing an item carries (its label, above all) votes for itself."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from simengine.errors import SimengineError
from simengine.evaluation.metrics import normalise

# Up to this many items the k-NN graph is exact (a flat inner-product search, ~n² × dim flops); beyond, an HNSW
# graph answers it at a recall that does not change a ranking by neighbourhood votes or distances.
EXACT_ITEMS = 200_000
QUERY_BLOCK = 4096
HNSW_M = 32


@dataclass
class IndexedItems:
    """An index's live items, by id: their rows (path, label, sha256, metadata) and unit vectors, row-aligned."""

    path: str
    rows: list[dict[str, Any]]
    vectors: np.ndarray
    model_config: dict[str, Any]

    @property
    def labels(self) -> list[str | None]:
        return [row["label"] for row in self.rows]

    @property
    def sha256(self) -> list[str]:
        return [row["sha256"] for row in self.rows]


def read_items(index_dir: str | os.PathLike) -> IndexedItems:
    """The live items of an index's current version and their stored vectors (all in memory: 1 GB at 1M × 256)."""
    from simengine.index.reader import Index
    from simengine.model.bundle import read_config
    from simengine.store import rows as store_rows

    with Index(index_dir) as index:
        rows = sorted(store_rows.live_rows(index.conn, index.version), key=lambda row: row["id"])
        if not rows:
            raise SimengineError(f"{index_dir}: the index has no items")
        vectors = normalise(index.vectors([row["id"] for row in rows]))
        config = read_config(index.model_dir)
    return IndexedItems(str(index_dir), rows, vectors, config)


def nearest_others(vectors: np.ndarray, sha256: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cosines) of each row's k nearest other rows, best first, leaving out the row itself and rows of the
    same content; -1 (and cosine NaN) where fewer than k others exist."""
    if k < 1:
        raise SimengineError("k must be at least 1")
    import faiss

    n, dim = vectors.shape
    codes = np.unique(np.asarray(sha256), return_inverse=True)[1]
    copies = int(np.bincount(codes).max())  # a row's copies may fill its first places: ask for that many more
    wanted = min(n, k + copies)
    if n <= EXACT_ITEMS:
        searcher = faiss.IndexFlatIP(dim)
    else:
        searcher = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        searcher.hnsw.efSearch = max(64, 2 * wanted)
    searcher.add(np.ascontiguousarray(vectors, np.float32))
    found = np.full((n, k), -1, np.int64)
    cosines = np.full((n, k), np.nan, np.float32)
    for start in range(0, n, QUERY_BLOCK):
        block = slice(start, min(n, start + QUERY_BLOCK))
        sims, rows = searcher.search(np.ascontiguousarray(vectors[block], np.float32), wanted)
        if wanted < k:  # a collection of fewer than k others
            rows = np.pad(rows, ((0, 0), (0, k - wanted)), constant_values=-1)
            sims = np.pad(sims, ((0, 0), (0, k - wanted)), constant_values=np.nan)
        own = codes[np.arange(block.start, block.stop)][:, None]
        keep = (rows >= 0) & (codes[np.maximum(rows, 0)] != own)
        # the first k kept per row, in order: a stable sort puts kept entries first
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        kept = np.take_along_axis(keep, order, axis=1)
        found[block] = np.where(kept, np.take_along_axis(rows, order, axis=1), -1)
        cosines[block] = np.where(kept, np.take_along_axis(sims, order, axis=1), np.nan)
    return found, cosines
