"""Building an index: embed a collection into a new index directory, or as the next version of an existing one."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from simengine.data.decode import image_size
from simengine.data.folders import Item
from simengine.errors import SimengineError
from simengine.index.calibrate import calibrate_index
from simengine.index import index_choice
from simengine.index.lock import DEFAULT_TIMEOUT_S
from simengine.index.store import CURRENT, V1_MANIFEST, now_iso
from simengine.index.writer import IndexWriter, create_empty
from simengine.model.bundle import Model


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


def build_index(
    items: Sequence[Item], model: Model, out: str | os.PathLike, index_type: str = "auto",
    target_far: float | None = None, progress: bool = False, seed: int = 0, build_info: dict | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> tuple[Path, AddReport]:
    """Embed `items` into the index at `out`. A new path gets a new index (with a copy of the model); an existing
    index gets the new collection as its next version, under new ids, its earlier items removed."""
    out = Path(out)
    in_place = check_target(out, index_type)
    report = AddReport()
    started = time.time()
    vectors, kept, report.failed = embed_items(model, unique_by_content(items, report), progress)
    if not kept:
        raise SimengineError("no image could be embedded; nothing to index")
    rows = item_rows(kept)
    calibration = calibrate_index(rows, vectors, model, target_far, seed).to_dict()
    info = dict(build_info or {}, embed_and_build_seconds=round(time.time() - started, 1),
                duplicates=len(report.duplicates), failed=len(report.failed))

    def write(writer: IndexWriter) -> None:
        report.added = writer.replace_all(vectors, rows, model, calibration, index_type, info)

    commit_build(out, model, in_place, write, "build", timeout_s)
    return out, report


def commit_build(out: Path, model: Model, in_place: bool, write: Callable[[IndexWriter], None], operation: str,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Commit what `write` stages as the next version of the index at `out` (`in_place`), or as the first version
    of a new index, built beside `out` and moved there once committed: a failed build leaves nothing at `out`."""

    def commit_into(folder: Path) -> None:
        with IndexWriter(folder, timeout_s) as writer:
            write(writer)
            writer.commit(operation)

    if in_place:
        commit_into(out)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.building-{secrets.token_hex(3)}"
    try:
        create_empty(staging, model)
        commit_into(staging)
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_target(out: Path, index_type: str = "auto") -> bool:
    """Fail before any slow work when the index type is unknown or `out` cannot take an index; True when `out` is an
    index already (the build becomes its next version)."""
    index_choice.check_type(index_type)
    if (out / CURRENT).is_file():
        return True
    _check_replaceable(out)
    return False


def _check_replaceable(out: Path) -> None:
    """Nothing at `out`, an empty folder, or a format-1 index (which a build replaces); anything else is refused."""
    target = out.resolve() if out.is_symlink() else out
    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return
    if not (target / V1_MANIFEST).is_file():
        raise SimengineError(f"{out} exists and is not an index; choose another --out")


def _swap_in(staging: Path, out: Path) -> None:
    """Put the finished `staging` directory at `out`, where there is nothing yet, or a format-1 index: that one (a
    link to a hidden version directory) is moved aside and deleted once the new one is in place."""
    if (out / CURRENT).is_file():
        raise SimengineError(f"another build created an index at {out} meanwhile; run again to rebuild it in place")
    if not (out.exists() or out.is_symlink()) or (out.is_dir() and not any(out.iterdir())):
        try:
            os.rename(staging, out)
        except OSError as exc:
            raise SimengineError(f"{out} was created by another process meanwhile ({exc.strerror}); run the build "
                                 "again to rebuild it in place") from None
        return
    old_target = out.resolve() if out.is_symlink() else None
    aside = out.parent / f".{out.name}.replaced-{secrets.token_hex(3)}"
    os.rename(out, aside)
    os.rename(staging, out)
    if old_target is None:
        shutil.rmtree(aside, ignore_errors=True)
        return
    aside.unlink()
    if old_target.parent == out.parent.resolve():
        shutil.rmtree(old_target, ignore_errors=True)
