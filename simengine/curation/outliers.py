"""Outliers: items unlike the rest of their collection, or of their label, ranked by the distance to their k-th
nearest other picture (1 - its cosine; never itself nor a copy). The k-th, and a k of 50: a few odd images alike
(a handful of screenshots among photos, a batch from another collection) are each other's nearest and would vouch
for one another under a small k or a mean over it; against the benchmark's 95 planted images, 5 kinds of about 19,
k = 10 found 0.54 of them, k = 50 0.72 (`benchmarks/results/curation.md`).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from simengine.curation import OUTLIER_NEIGHBOURS
from simengine.curation.neighbours import nearest_others, read_items
from simengine.errors import SimengineError

NEIGHBOURS = OUTLIER_NEIGHBOURS
NEAREST_SHOWN = 3


@dataclass
class Outlier:
    id: int
    path: str
    label: str | None
    score: float  # 1 - the cosine of its k-th nearest other picture
    nearest: list[dict[str, Any]] = field(default_factory=list)  # id, path, label, cosine


@dataclass
class OutlierReport:
    index: str
    version: int
    k: int
    items: int
    within_labels: bool
    outliers: list[Outlier]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "version": self.version, "k": self.k, "items": self.items, "within_labels": self.within_labels,
                "seconds": round(self.seconds, 2), "outliers": [asdict(o) for o in self.outliers]}


def outlier_scores(vectors: np.ndarray, sha256: list[str], k: int = NEIGHBOURS,
                   groups: list[str | None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, neighbours, cosines) of every row: 1 - the cosine of its k-th nearest other picture (its farthest
    when fewer exist), among the rows of its own group when `groups` is given (rows of no group, or of a group of
    one picture, against all rows)."""
    n = len(vectors)
    neighbours, cosines = np.full((n, k), -1, np.int64), np.full((n, k), np.nan, np.float32)
    alone = np.ones(n, bool)
    if groups is not None:
        names, code = np.unique(np.array([g if g is not None else "" for g in groups], object), return_inverse=True)
        for c, name in enumerate(names):
            rows = np.flatnonzero(code == c)
            if name == "" or len(np.unique(np.asarray(sha256, object)[rows])) < 2:
                continue
            found, sims = nearest_others(vectors[rows], [sha256[r] for r in rows], k)
            neighbours[rows] = np.where(found >= 0, rows[np.maximum(found, 0)], -1)
            cosines[rows] = sims
            alone[rows] = False
    if alone.any():
        found, sims = nearest_others(vectors, sha256, k)
        neighbours[alone], cosines[alone] = found[alone], sims[alone]
    counts = (neighbours >= 0).sum(axis=1)
    farthest = cosines[np.arange(n), np.maximum(counts - 1, 0)]  # neighbours come best first, -1 after them
    return np.where(counts > 0, 1.0 - farthest, 1.0), neighbours, cosines  # no other picture: as far as can be


def find_outliers(index_dir: str | os.PathLike, k: int = NEIGHBOURS, top: int | None = 100,
                  within_labels: bool = False) -> OutlierReport:
    """The index's items furthest from their nearest others, most unusual first (the `top` ones, or all); with
    `within_labels`, from the nearest items of their own label (an image unlike its class). Reads only."""
    started = time.time()
    items = read_items(index_dir)
    labels = items.labels
    if within_labels and not any(label is not None for label in labels):
        raise SimengineError(f"{index_dir}: the index has no labels to compare items within")
    scores, neighbours, cosines = outlier_scores(items.vectors, items.sha256, k, labels if within_labels else None)
    ranked = np.argsort(-scores, kind="stable")[:top]
    outliers = [Outlier(items.rows[n]["id"], items.rows[n]["path"], labels[n], round(float(scores[n]), 4),
                        [{"id": items.rows[m]["id"], "path": items.rows[m]["path"], "label": labels[m],
                          "cosine": round(float(c), 4)}
                         for m, c in zip(neighbours[n][:NEAREST_SHOWN], cosines[n][:NEAREST_SHOWN]) if m >= 0])
                for n in ranked]
    return OutlierReport(str(index_dir), items.version, k, len(items.rows), within_labels, outliers, time.time() - started)
