"""A 2-D map of an index's embeddings: openTSNE's t-SNE of the stored vectors (after PCA to 50 dimensions),
computed once per index version and kept inside the index directory (`maps/v<version>.npz`), so that a copy of the
index carries it.

Why t-SNE, not UMAP (`benchmarks/results/map_projection.md`, on Imagenette's 9,469 vectors and 100,000 made from
them, on 2 cores): at 10k both keep the classes apart alike (trustworthiness 0.987 and 0.979, label agreement 0.964
and 0.965) and UMAP fits faster (6.5 s against 52 s, but its numba JIT costs 32-49 s in every fresh process); at
100k t-SNE keeps the neighbourhoods (trustworthiness 0.967 against 0.70) in about the same time (153 s against
138 s) and a third of the memory (1.6 GB peak against 4.3 GB). PCA alone is fast and loses them (0.83).
"""

from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simengine.curation.neighbours import read_items
from simengine.errors import SimengineError
from simengine.files import write_durably

log = logging.getLogger(__name__)

MAPS = "maps"
PCA_DIMS = 50
PERPLEXITY = 30
MIN_POINTS = 10  # fewer, and PCA alone places them: t-SNE needs some neighbours for each point
MAP_FORMAT = 1


@dataclass
class ProjectionMap:
    index: str
    version: int
    method: str
    ids: np.ndarray  # int64, by id
    xy: np.ndarray  # float32 (n, 2), scaled into [0, 1] on both axes
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "version": self.version, "method": self.method, "items": len(self.ids),
                "seconds": round(self.seconds, 2), "ids": self.ids.tolist(),
                "x": np.round(self.xy[:, 0].astype(float), 5).tolist(),
                "y": np.round(self.xy[:, 1].astype(float), 5).tolist()}


def project(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(n, 2) coordinates in [0, 1] and the method's name: seeded t-SNE (openTSNE, FFT gradients, on every core)
    after PCA to 50 dimensions; PCA alone for fewer than MIN_POINTS points."""
    vectors = np.asarray(vectors, np.float32)
    n = len(vectors)
    if n == 0:
        raise SimengineError("nothing to map: the index has no items")
    reduced = _pca(vectors, PCA_DIMS)
    if n < MIN_POINTS:
        return _unit_square(_pca(reduced, 2).astype(np.float32)), "pca"
    from openTSNE import TSNE

    perplexity = min(PERPLEXITY, (n - 1) / 3)  # each point's neighbourhood: 3 x perplexity others at most
    tsne = TSNE(n_components=2, perplexity=perplexity, negative_gradient_method="fft", n_jobs=os.cpu_count() or 1,
                random_state=seed)
    xy = np.asarray(tsne.fit(np.ascontiguousarray(reduced, np.float64)), np.float32)
    return _unit_square(xy), f"t-SNE (openTSNE, perplexity {perplexity:g}, PCA-{reduced.shape[1]})"


def index_map(index_dir: str | os.PathLike) -> ProjectionMap:
    """The map of the index's current version: read from `maps/` when it was made before, else computed and
    stored there (older versions' maps are removed; a read-only index keeps it in memory only)."""
    from simengine.store.reader import StoreReader

    started = time.time()
    with StoreReader(index_dir) as index:  # a stored map needs no vectors read (5 GB at 1M x 1280)
        found = _read(map_file(index_dir, index.version), index.version)
    if found is not None:
        return found
    items = read_items(index_dir)
    stored = map_file(index_dir, items.version)
    if (found := _read(stored, items.version)) is not None:  # made meanwhile by another process
        return found
    ids = np.array([row["id"] for row in items.rows], np.int64)
    xy, method = project(items.vectors)
    result = ProjectionMap(str(index_dir), items.version, method, ids, xy, time.time() - started)
    _write(result, stored)
    return result


def map_file(index_dir: str | os.PathLike, version: int) -> Path:
    return Path(index_dir) / MAPS / f"v{int(version)}.npz"


def _read(path: Path, version: int) -> ProjectionMap | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["format"]) != MAP_FORMAT or int(data["version"]) != version:
                return None
            return ProjectionMap(str(path.parents[1]), version, str(data["method"]), data["ids"], data["xy"],
                                 float(data["seconds"]))
    except (OSError, KeyError, ValueError):
        return None


def _write(result: ProjectionMap, path: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, format=MAP_FORMAT, version=result.version, method=result.method, ids=result.ids, xy=result.xy,
             seconds=result.seconds)
    try:
        path.parent.mkdir(exist_ok=True)
        write_durably(path, buffer.getvalue())
        for old in path.parent.glob("v*.npz"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("the map of %s is not kept: %s", result.index, exc.strerror or exc)


def _pca(x: np.ndarray, dims: int) -> np.ndarray:
    """The first `dims` principal components of x (fewer when x has fewer rows or columns)."""
    centred = x - x.mean(axis=0)
    dims = min(dims, *centred.shape)
    if dims >= centred.shape[1]:
        return centred
    # The covariance's eigenvectors: (d x d) at most 1280 x 1280, whatever the number of rows.
    _, vectors = np.linalg.eigh(centred.T @ centred)
    return centred @ vectors[:, ::-1][:, :dims]


def _unit_square(xy: np.ndarray) -> np.ndarray:
    low, high = xy.min(axis=0), xy.max(axis=0)
    return ((xy - low) / np.where(high > low, high - low, 1)).astype(np.float32)
