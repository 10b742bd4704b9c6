"""On-disk cache of backbone features keyed by (backbone, weights hash, view) and each file's sha256."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Sequence

import numpy as np

from simengine.locations import cache_dir
from simengine.model.encoder import Encoder

log = logging.getLogger(__name__)

CHUNK = 512  # committed every chunk, so an interrupted run resumes where it stopped


class FeatureCache:
    """sqlite table sha256 -> float32 vector, one file per encoder identity and view."""

    def __init__(self, encoder: Encoder, flip: bool = False, root: Path | None = None):
        self.encoder, self.flip = encoder, flip
        ident = encoder.identity
        view = "flip" if flip else "center"
        root = root or cache_dir() / "features"
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{ident['backbone']}-{ident['weights_sha256'][:12]}-{view}.sqlite"
        self.db = sqlite3.connect(self.path)
        self.db.execute("CREATE TABLE IF NOT EXISTS features (sha256 TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    def lookup(self, shas: Sequence[str]) -> dict[str, np.ndarray]:
        found = {}
        unique = list(dict.fromkeys(shas))
        for start in range(0, len(unique), 900):  # sqlite's bound-parameter limit
            part = unique[start:start + 900]
            marks = ",".join("?" * len(part))
            for sha, blob in self.db.execute(f"SELECT sha256, vector FROM features WHERE sha256 IN ({marks})", part):
                found[sha] = np.frombuffer(blob, dtype=np.float32)
        return found

    def features(
        self, paths: Sequence[str | Path], shas: Sequence[str], progress: bool = False
    ) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
        """Features for each path (NaN rows where decoding failed), computing and storing what is missing."""
        found = self.lookup(shas)
        missing = [i for i, sha in enumerate(shas) if sha not in found]
        failed: list[tuple[int, str, str]] = []
        if missing:
            log.info("computing %d of %d features (%s)", len(missing), len(shas), self.path.name)
        from tqdm import tqdm

        with tqdm(total=len(missing), unit="img", desc="features", disable=not progress or not missing) as bar:
            for start in range(0, len(missing), CHUNK):
                chunk = missing[start:start + CHUNK]
                result = self.encoder.embed_paths([paths[i] for i in chunk], flip=self.flip)
                rows = [(shas[chunk[j]], result.vectors[r].tobytes()) for r, j in enumerate(result.ok)]
                with self.db:
                    self.db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?)", rows)
                for r, j in enumerate(result.ok):
                    found[shas[chunk[j]]] = result.vectors[r]
                failed.extend((chunk[j], path, reason) for j, path, reason in result.failed)
                bar.update(len(chunk))
        out = np.full((len(shas), self.encoder.dim), np.nan, dtype=np.float32)
        for i, sha in enumerate(shas):
            if sha in found:
                out[i] = found[sha]
        return out, failed
