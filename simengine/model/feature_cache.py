"""On-disk cache of backbone features keyed by (backbone, weights hash, view) and each file's sha256."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from simengine.files import cache_dir
from simengine.model.encoder import Encoder

log = logging.getLogger(__name__)

CHUNK = 512  # committed every chunk, so an interrupted run resumes where it stopped


class FeatureCache:
    """sqlite table sha256 -> float32 vector, one file per encoder identity and view."""

    def __init__(self, encoder: Encoder, flip: bool = False, root: Path | None = None):
        self.encoder, self.flip = encoder, flip
        ident = encoder.identity
        tag = encoder.runtime.features_tag
        view = ("flip" if flip else "center") + (f"-{tag}" if tag else "")
        root = root or cache_dir() / "features"
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{ident['backbone']}-{ident['weights_sha256'][:12]}-{view}.sqlite"
        self.db = sqlite3.connect(self.path)
        self.db.execute("CREATE TABLE IF NOT EXISTS features (sha256 TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    def lookup(self, shas: Sequence[str]) -> dict[str, np.ndarray]:
        """{sha256: vector} of the cached ones among `shas`."""
        return dict(self._cached(shas))

    def _cached(self, shas: Sequence[str]) -> Iterator[tuple[str, np.ndarray]]:
        unique = list(dict.fromkeys(shas))
        for start in range(0, len(unique), 900):  # sqlite's bound-parameter limit
            part = unique[start:start + 900]
            marks = ",".join("?" * len(part))
            for sha, blob in self.db.execute(f"SELECT sha256, vector FROM features WHERE sha256 IN ({marks})", part):
                yield sha, np.frombuffer(blob, dtype=np.float32)

    def features(
        self, paths: Sequence[str | Path], shas: Sequence[str], progress: bool = False
    ) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
        """Features for each path (NaN rows where decoding failed), computing and storing what is missing. Vectors go
        straight into the output matrix, the only copy held: at a million images each copy is gigabytes."""
        out = np.full((len(shas), self.encoder.dim), np.nan, dtype=np.float32)
        rows_of: dict[str, list[int]] = {}
        for row, sha in enumerate(shas):
            rows_of.setdefault(sha, []).append(row)
        for sha, vector in self._cached(shas):
            out[rows_of[sha]] = vector
        missing = [rows[0] for sha, rows in rows_of.items() if np.isnan(out[rows[0], 0])]
        failed: list[tuple[int, str, str]] = []
        if missing:
            log.info("computing %d of %d features (%s)", len(missing), len(shas), self.path.name)
        from tqdm import tqdm

        with tqdm(total=len(missing), unit="img", desc="features", disable=not progress or not missing) as bar:
            for start in range(0, len(missing), CHUNK):
                chunk = missing[start:start + CHUNK]
                result = self.encoder.embed_paths([paths[i] for i in chunk], flip=self.flip)
                done = [(shas[chunk[j]], result.vectors[r]) for r, j in enumerate(result.ok)]
                with self.db:
                    self.db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?)",
                                        [(sha, vector.tobytes()) for sha, vector in done])
                for sha, vector in done:
                    out[rows_of[sha]] = vector
                for j, path, reason in result.failed:  # every row of those bytes failed alike
                    failed.extend((row, str(paths[row]), reason) for row in rows_of[shas[chunk[j]]])
                bar.update(len(chunk))
        return out, failed
