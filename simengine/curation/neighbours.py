"""The out-of-sample neighbourhood of an index's items: each item's k nearest *other pictures*, never itself nor a
copy of it (the same content hash), so that nothing an item carries (its label, above all) votes for itself. Items
of one content are searched once, and a picture indexed several times counts once among another's neighbours (its
first item stands for it): copies never multiply a vote."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from simengine.errors import SimengineError
from simengine.evaluation.metrics import normalise

# Up to this many pictures the k-NN graph is exact (a flat inner-product search, ~n² × dim flops); beyond, an HNSW
# graph answers it, at a recall that hardly moves a ranking by neighbourhood votes or distances.
EXACT_ITEMS = 200_000
QUERY_BLOCK = 4096
HNSW_M = 32


@dataclass
class IndexedItems:
    """An index's live items at one version, by id: their rows (path, label, sha256, metadata) and unit vectors,
    row-aligned."""

    path: str
    version: int
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
    """The live items of an index's current version and their stored vectors, all in memory (4 bytes per
    dimension per item: 1 GB at 1M × 256, 5 GB at 1M × 1280)."""
    from simengine.index.reader import Index
    from simengine.model.bundle import read_config
    from simengine.store import rows as store_rows

    with Index(index_dir) as index:
        rows = sorted(store_rows.live_rows(index.conn, index.version), key=lambda row: row["id"])
        if not rows:
            raise SimengineError(f"{index_dir}: the index has no items")
        vectors = normalise(index.vectors([row["id"] for row in rows]))
        config = read_config(index.model_dir)
        version = index.version
    return IndexedItems(str(index_dir), version, rows, vectors, config)


def nearest_others(vectors: np.ndarray, sha256: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cosines) of each row's k nearest other pictures, best first: never the row itself nor a row of the
    same content, and each other content once (its first row); -1 (cosine NaN) where fewer than k exist."""
    if k < 1:
        raise SimengineError("k must be at least 1")
    import faiss

    n, dim = vectors.shape
    _, first, content = np.unique(np.asarray(sha256), return_index=True, return_inverse=True)
    pictures = np.ascontiguousarray(vectors[first], np.float32)  # one row per content, in content order
    if len(pictures) <= EXACT_ITEMS:
        searcher = faiss.IndexFlatIP(dim)
    else:
        searcher = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        searcher.hnsw.efSearch = max(64, 2 * (k + 1))
    searcher.add(pictures)
    wanted = min(len(pictures), k + 1)  # the row's own content is among the nearest, at most once
    found = np.full((n, k), -1, np.int64)
    cosines = np.full((n, k), np.nan, np.float32)
    by_content = np.argsort(content, kind="stable")
    sorted_content = content[by_content]
    for start in range(0, len(pictures), QUERY_BLOCK):
        block = np.arange(start, min(len(pictures), start + QUERY_BLOCK))
        sims, hits = searcher.search(pictures[block], wanted)
        keep = (hits >= 0) & (hits != block[:, None])
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # the kept ones first, in their order
        kept = np.take_along_axis(keep, order, axis=1)
        rows = np.where(kept, first[np.maximum(np.take_along_axis(hits, order, axis=1), 0)], -1)
        sims = np.where(kept, np.take_along_axis(sims, order, axis=1), np.nan)
        width = rows.shape[1]
        # every row of these contents gets its content's neighbours
        members = by_content[np.searchsorted(sorted_content, block[0]):np.searchsorted(sorted_content, block[-1],
                                                                                        side="right")]
        found[members, :width] = rows[content[members] - start]
        cosines[members, :width] = sims[content[members] - start]
    return found, cosines
