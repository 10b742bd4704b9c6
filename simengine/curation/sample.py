"""A representative sample: n items that cover an index's embedding space, the item nearest each k-means centroid;
with labels, each label gets its share of n (largest remainders), so a small class is not left out by a big one."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from simengine.curation.neighbours import read_items
from simengine.errors import SimengineError

KMEANS_ITERATIONS = 20


@dataclass
class Representative:
    id: int
    path: str
    label: str | None
    represents: int  # items of its cluster


@dataclass
class SampleReport:
    index: str
    version: int
    n: int
    items: int
    per_label: bool
    sample: list[Representative]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "version": self.version, "n": self.n, "items": self.items, "per_label": self.per_label,
                "seconds": round(self.seconds, 2), "sample": [asdict(r) for r in self.sample]}


def shares(counts: list[int], n: int) -> list[int]:
    """`n` split in proportion to `counts` by largest remainders, never more than a count; every group with items
    gets at least one while n allows."""
    counts_arr = np.asarray(counts, float)
    exact = counts_arr / counts_arr.sum() * n
    given = np.minimum(np.floor(exact).astype(int), counts)
    if n >= len(counts):
        given = np.maximum(given, np.minimum(1, counts))
    for g in np.argsort(-(exact - np.floor(exact)), kind="stable"):
        if given.sum() >= n:
            break
        if given[g] < counts[g]:
            given[g] += 1
    while given.sum() > n:  # the minimum of one each overshot: take from the largest shares
        given[np.argmax(given)] -= 1
    return given.tolist()


def medoids(vectors: np.ndarray, n: int, seed: int = 0) -> list[tuple[int, int]]:
    """(row, cluster size) of the member nearest its centroid, for each of n k-means clusters (largest first; an
    empty cluster gives none); every row when there are no more than n."""
    if n >= len(vectors):
        return [(row, 1) for row in range(len(vectors))]
    import faiss

    data = np.ascontiguousarray(vectors, np.float32)
    kmeans = faiss.Kmeans(data.shape[1], n, niter=KMEANS_ITERATIONS, seed=seed, spherical=True,
                          min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    kmeans.train(data)
    similarity, cluster = (a[:, 0] for a in kmeans.index.search(data, 1))
    sizes = np.bincount(cluster, minlength=n)
    order = np.lexsort((-similarity, cluster))  # by cluster, its nearest member first
    firsts = order[np.r_[True, cluster[order][1:] != cluster[order][:-1]]]
    return sorted(((int(row), int(sizes[cluster[row]])) for row in firsts), key=lambda pair: -pair[1])


def representative_sample(index_dir: str | os.PathLike, n: int, per_label: bool | None = None,
                          seed: int = 0) -> SampleReport:
    """n items that represent the index, by k-means over the embeddings; `per_label` (default: when the index has
    labels) samples each label in proportion, unlabelled items as one more group. Reads only."""
    if n < 1:
        raise SimengineError("--n must be at least 1")
    started = time.time()
    items = read_items(index_dir)
    labels = items.labels
    per_label = any(label is not None for label in labels) if per_label is None else per_label
    # labels in their order, the unlabelled after them; one group of all without per_label
    keys = [("0" + label if label is not None else "1") if per_label else "" for label in labels]
    _, group = np.unique(np.array(keys, object), return_inverse=True)
    members = [np.flatnonzero(group == g) for g in range(group.max() + 1)]
    sample = []
    for rows, share in zip(members, shares([len(rows) for rows in members], n)):
        if share:
            sample += [Representative(items.rows[rows[r]]["id"], items.rows[rows[r]]["path"], labels[rows[r]], size)
                       for r, size in medoids(items.vectors[rows], share, seed)]
    return SampleReport(str(index_dir), items.version, n, len(labels), per_label, sample, time.time() - started)
