"""A 2-D map of an index's embeddings: UMAP of the stored vectors (after PCA to 50 dimensions), computed once per
index version and kept inside the index directory (`maps/v<version>.npz`), so that a copy of the index carries it.
Why UMAP: `benchmarks/results/map_projection.md` measures it against openTSNE and PCA for quality and time.
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
UMAP_NEIGHBOURS = 15
MIN_DIST = 0.1
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


def project(vectors: np.ndarray) -> tuple[np.ndarray, str]:
    """(n, 2) coordinates in [0, 1] and the method's name: UMAP after PCA to 50 dimensions; PCA alone below 16
    points, too few for UMAP's neighbourhood graph."""
    vectors = np.asarray(vectors, np.float32)
    n = len(vectors)
    if n == 0:
        raise SimengineError("nothing to map: the index has no items")
    reduced = _pca(vectors, PCA_DIMS)
    if n <= UMAP_NEIGHBOURS:
        xy, method = _pca(reduced, 2), "pca"
    else:
        import umap

        # Unseeded: a seed makes UMAP run on one thread, and each version's map is computed once and stored.
        model = umap.UMAP(n_components=2, n_neighbors=UMAP_NEIGHBOURS, min_dist=MIN_DIST, n_jobs=os.cpu_count() or 1)
        xy, method = model.fit_transform(reduced), f"umap (n_neighbors={UMAP_NEIGHBOURS}, min_dist={MIN_DIST}, PCA-{reduced.shape[1]})"
    return _unit_square(np.asarray(xy, np.float32)), method


def index_map(index_dir: str | os.PathLike) -> ProjectionMap:
    """The map of the index's current version: read from `maps/` when it was made before, else computed and
    stored there (older versions' maps are removed; a read-only index keeps it in memory only)."""
    started = time.time()
    items = read_items(index_dir)
    stored = map_file(index_dir, items.version)
    found = _read(stored, items.version)
    if found is not None:
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
    values, vectors = np.linalg.eigh(centred.T @ centred)
    return centred @ vectors[:, ::-1][:, :dims]


def _unit_square(xy: np.ndarray) -> np.ndarray:
    low, high = xy.min(axis=0), xy.max(axis=0)
    return ((xy - low) / np.where(high > low, high - low, 1)).astype(np.float32)
