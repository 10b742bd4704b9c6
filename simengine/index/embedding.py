"""Images into rows and vectors: the embedding and the rows shared by building, adding and syncing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simengine.data.decode import image_size
from simengine.data.folders import Item
from simengine.model.bundle import Model
from simengine.store.layout import now_iso


@dataclass
class AddReport:
    """What a build or add did: new ids, duplicates skipped (path, existing id or -1), failures (path, reason)."""

    added: list[int] = field(default_factory=list)
    duplicates: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"added": self.added, "duplicates": [{"path": p, "existing_id": i} for p, i in self.duplicates],
                "failed": [{"path": p, "reason": r} for p, r in self.failed]}


def unique_by_content(items: Sequence[Item], report: AddReport) -> list[Item]:
    """The first item of each content hash; the others are reported as duplicates."""
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.sha256 in seen:
            report.duplicates.append((str(item.path), -1))
            continue
        seen.add(item.sha256)
        unique.append(item)
    return unique


def embed_items(model: Model, items: Sequence[Item], progress: bool) -> tuple[np.ndarray, list[Item], list[tuple[str, str]]]:
    """Embeddings of `items` through the feature cache: (vectors, the items embedded, failures as (path, reason))."""
    from simengine.model.feature_cache import FeatureCache

    cache = FeatureCache(model.encoder, flip=model.flip)
    features, failed = cache.features([str(i.path) for i in items], [i.sha256 for i in items], progress=progress)
    keep = np.flatnonzero(~np.isnan(features).any(axis=1))
    vectors = model.embed_features(features[keep]) if len(keep) else np.zeros((0, model.dim), np.float32)
    return vectors, [items[i] for i in keep], [(path, reason) for _, path, reason in failed]


def item_rows(items: Sequence[Item]) -> list[dict[str, Any]]:
    """SQLite rows (without ids) for embedded items; paths are stored absolute."""
    rows = []
    for item in items:
        width, height = image_size(item.path)
        rows.append({**item.metadata, "path": str(Path(item.path).absolute()), "label": item.label, "split": item.split, "sha256": item.sha256,
                     "width": width, "height": height, "added_at": now_iso()})
    return rows
