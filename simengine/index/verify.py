"""Checking an index without changing a byte of it: every problem as one line, never a traceback."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import numpy as np

from simengine.errors import SimengineError
from simengine.hashing import sha256_file
from simengine.index import faiss_factory, items_db
from simengine.index.store import IndexDir

# What damaged files make the checks raise.
DAMAGE = (SimengineError, OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError, sqlite3.Error)


def verify_index(path: str | os.PathLike) -> list[str]:
    """Every inconsistency of the live version: segment hashes and counts, FAISS ids against SQLite rows, the model.
    An empty list means the index is sound."""
    store = IndexDir(path)
    try:
        manifest = store.read_manifest(store.current_version())
    except DAMAGE as exc:
        return [str(exc)]
    seg_ids: set[int] = set()
    problems = _guarded("segments", _check_segments, store, manifest, seg_ids)
    problems += _guarded(items_db.ITEMS_DB, _check_rows, store, manifest, seg_ids)
    problems += _guarded("model", _check_model, store, manifest)
    problems += _guarded("calibration", _check_calibration, manifest)
    return problems


def _guarded(what: str, check, *args) -> list[str]:
    """A check's problems; whatever a damaged file makes it raise is one problem more, never a traceback."""
    try:
        return check(*args)
    except DAMAGE as exc:
        return [f"{what}: {exc}"]


def _check_segments(store: IndexDir, manifest: dict, seg_ids: set[int]) -> list[str]:
    """Problems of the segment files; their ids go into `seg_ids`."""
    import faiss

    problems, parts = [], []
    for record in manifest["segments"]:
        path = store.segment_path(record["file"])
        if not path.is_file():
            problems.append(f"segment {record['file']} is missing")
            continue
        if sha256_file(path) != record["sha256"]:
            problems.append(f"segment {record['file']}: sha256 differs from the manifest")
            continue
        try:
            segment = faiss.read_index(str(path))
        except RuntimeError:
            problems.append(f"segment {record['file']}: not a readable FAISS file")
            continue
        ids = faiss_factory.ids_of(segment)
        if segment.ntotal != record["vectors"] or segment.d != manifest["dim"]:
            problems.append(f"segment {record['file']}: {segment.ntotal} vectors of dim {segment.d}, "
                            f"the manifest says {record['vectors']} of dim {manifest['dim']}")
        if len(ids) and (ids.min() != record["id_min"] or ids.max() != record["id_max"]):
            problems.append(f"segment {record['file']}: ids {ids.min()}..{ids.max()}, the manifest says "
                            f"{record['id_min']}..{record['id_max']}")
        parts.append(ids)
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if len(np.unique(ids)) != len(ids):
        problems.append(f"{len(ids) - len(np.unique(ids))} ids are stored in more than one segment")
    if len(ids) and ids.max() >= manifest["next_id"]:
        problems.append(f"id {ids.max()} is not below the next id to give out ({manifest['next_id']})")
    seg_ids.update(ids.tolist())
    return problems


def _check_rows(store: IndexDir, manifest: dict, seg_ids: set[int]) -> list[str]:
    journal = store.root / (items_db.ITEMS_DB + "-journal")
    if journal.is_file() and journal.stat().st_size:
        # A writer died inside a SQLite transaction. Rolling its journal back is a write, so check a private copy
        # (where SQLite rolls it back) and leave the index as it is: its next reader or writer recovers it.
        with tempfile.TemporaryDirectory(prefix="simengine-verify-") as folder:
            shutil.copy2(store.root / items_db.ITEMS_DB, Path(folder) / items_db.ITEMS_DB)
            with contextlib.suppress(FileNotFoundError):  # the writer finished meanwhile: nothing to roll back
                shutil.copy2(journal, Path(folder) / journal.name)
            with contextlib.closing(items_db.connect(Path(folder))) as conn:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return _check_rows_in(Path(folder), manifest, seg_ids)
    return _check_rows_in(store.root, manifest, seg_ids)


def _check_rows_in(folder: Path, manifest: dict, seg_ids: set[int]) -> list[str]:
    version = manifest["version"]
    with contextlib.closing(items_db.connect(folder, read_only=True)) as conn:
        if (status := conn.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
            return [f"{items_db.ITEMS_DB}: {status}"]
        live = set(items_db.live_ids(conn, version).tolist())
        removed = set(items_db.removed_ids(conn, version).tolist())
    problems = []
    if missing := live - seg_ids:
        problems.append(f"{len(missing)} items have no vector (ids {sorted(missing)[:10]})")
    if orphans := seg_ids - live - removed:
        problems.append(f"{len(orphans)} vectors have no item (ids {sorted(orphans)[:10]})")
    if manifest["counts"]["items"] != len(live):
        problems.append(f"the manifest counts {manifest['counts']['items']} items, SQLite has {len(live)} at version {version}")
    return problems


def _check_model(store: IndexDir, manifest: dict) -> list[str]:
    from simengine.model.bundle import bundle_hash, read_config

    folder = store.model_dir(manifest)
    config = read_config(folder)
    if bundle_hash(folder) != manifest["model"]["hash"]:
        return ["the model bundle's hash differs from the manifest's"]
    if config["encoder"] != manifest["model"].get("encoder"):
        return ["the model's encoder differs from the one recorded in the manifest"]
    return []


def _check_calibration(manifest: dict) -> list[str]:
    from simengine.evaluation.decisions import Calibration

    calibration = Calibration.from_dict(manifest["calibration"])
    if calibration.default not in calibration.pair or calibration.default not in calibration.triplet:
        return [f"calibration: the default rule {calibration.default!r} has no threshold"]
    return []
