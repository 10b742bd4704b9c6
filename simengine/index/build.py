"""Building an index: embed a collection and write version 1 of a new, self-contained index directory."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simengine.data.decode import image_size
from simengine.data.folders import Item
from simengine.errors import IndexUnusableError, SimengineError
from simengine.index.calibrate import calibrate_index
from simengine.index.store import CURRENT, MODEL, V1_MANIFEST, now_iso
from simengine.index.writer import new_index
from simengine.model.bundle import Model

log = logging.getLogger(__name__)


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
        rows.append({"path": str(Path(item.path).absolute()), "label": item.label, "split": item.split, "sha256": item.sha256,
                     "width": width, "height": height, "added_at": now_iso()})
    return rows


def model_identity(model: Model) -> dict[str, Any]:
    return {"hash": model.hash} | {k: v for k, v in model.config.items() if k not in ("holdout_sha256", "calibration")}


def require_model(manifest: dict[str, Any], model: Model, where: str | os.PathLike) -> None:
    if model.hash != manifest["model"]["hash"]:
        raise IndexUnusableError(f"{where}: the index was built with model {manifest['model']['hash'][:12]}, "
                                 f"the model given is {model.hash[:12]}")


def build_index(
    items: Sequence[Item], model: Model, out: str | os.PathLike, index_type: str = "auto",
    target_far: float | None = None, progress: bool = False, seed: int = 0, build_info: dict | None = None,
) -> tuple[Path, AddReport]:
    """Embed `items` into a new index at `out` (with a copy of the model), replacing any index already there."""
    from simengine.index.faiss_factory import choose_type

    out = Path(out)
    _check_replaceable(out)
    choose_type(0, index_type)  # an unknown type fails before the slow part
    report = AddReport()
    started = time.time()
    vectors, kept, report.failed = embed_items(model, unique_by_content(items, report), progress)
    if not kept:
        raise SimengineError("no image could be embedded; nothing to index")
    rows = [dict(row, id=n) for n, row in enumerate(item_rows(kept))]
    calibration = calibrate_index(rows, vectors, model, target_far, seed)
    manifest = {
        "index_uuid": uuid.uuid4().hex,
        "created_at": now_iso(),
        "model": model_identity(model),
        "dim": int(vectors.shape[1]),
        "metric": "inner_product (cosine on L2-normalised vectors)",
        "calibration": calibration.to_dict(),
        "build": dict(build_info or {}, embed_and_build_seconds=round(time.time() - started, 1),
                      duplicates=len(report.duplicates), failed=len(report.failed)),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.building-{secrets.token_hex(3)}"
    try:
        shutil.copytree(model.path, staging / MODEL)
        new_index(staging, vectors, rows, manifest, index_type, seed)
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.added = [r["id"] for r in rows]
    return out, report


def _check_replaceable(out: Path) -> None:
    if out.is_symlink() or not out.exists():
        return
    if not out.is_dir() or (any(out.iterdir()) and not ((out / CURRENT).is_file() or (out / V1_MANIFEST).is_file())):
        raise SimengineError(f"{out} exists and is not an index; choose another --out")


def _swap_in(staging: Path, out: Path) -> None:
    """Put the finished `staging` directory at `out`; an index already there is moved aside first, then deleted.
    A crash between the two renames leaves the old index as `.<name>.replaced-*` beside it, never a mix."""
    if not (out.exists() or out.is_symlink()):
        os.rename(staging, out)
        return
    old = out.parent / f".{out.name}.replaced-{secrets.token_hex(3)}"
    v1_target = out.resolve() if out.is_symlink() else None  # format 1 kept its files in a hidden sibling
    os.rename(out, old)
    os.rename(staging, out)
    if old.is_symlink():
        old.unlink()
        if v1_target is not None and v1_target.parent == out.parent.resolve():
            shutil.rmtree(v1_target, ignore_errors=True)
    else:
        shutil.rmtree(old, ignore_errors=True)
