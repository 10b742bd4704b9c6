"""Checking a store's files without changing a byte of them: every problem as one line, never a traceback."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import numpy as np

from simengine.errors import SimengineError
from simengine.files import sha256_file
from simengine.store import faiss_factory, rows
from simengine.store.layout import StoreDir

# What damaged files make the checks raise.
DAMAGE = (SimengineError, OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError, sqlite3.Error)


def verify_store(path: str | os.PathLike) -> tuple[dict | None, list[str]]:
    """The live version's manifest (None when unreadable) and every inconsistency of its files: segment hashes and
    counts, FAISS ids against SQLite rows. No problems means the store is sound."""
    store = StoreDir(path)
    try:
        manifest = store.read_manifest(store.current_version())
    except DAMAGE as exc:
        return None, [str(exc)]
    seg_ids: set[int] = set()
    problems = guarded("segments", _check_segments, store, manifest, seg_ids)
    problems += guarded(rows.ITEMS_DB, _check_rows, store, manifest, seg_ids)
    return manifest, problems


def guarded(what: str, check, *args) -> list[str]:
    """A check's problems; whatever a damaged file makes it raise is one problem more, never a traceback."""
    try:
        return check(*args)
    except DAMAGE as exc:
        return [f"{what}: {exc}"]


def _check_segments(store: StoreDir, manifest: dict, seg_ids: set[int]) -> list[str]:
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


def _check_rows(store: StoreDir, manifest: dict, seg_ids: set[int]) -> list[str]:
    journal = store.root / (rows.ITEMS_DB + "-journal")
    if journal.is_file() and journal.stat().st_size:
        # A writer died inside a SQLite transaction. Rolling its journal back is a write, so check a private copy
        # (where SQLite rolls it back) and leave the index as it is: its next reader or writer recovers it.
        with tempfile.TemporaryDirectory(prefix="simengine-verify-") as folder:
            shutil.copy2(store.root / rows.ITEMS_DB, Path(folder) / rows.ITEMS_DB)
            with contextlib.suppress(FileNotFoundError):  # the writer finished meanwhile: nothing to roll back
                shutil.copy2(journal, Path(folder) / journal.name)
            with contextlib.closing(rows.connect(Path(folder))) as conn:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return _check_rows_in(Path(folder), manifest, seg_ids)
    return _check_rows_in(store.root, manifest, seg_ids)


def _check_rows_in(folder: Path, manifest: dict, seg_ids: set[int]) -> list[str]:
    version = manifest["version"]
    with contextlib.closing(rows.connect(folder, read_only=True)) as conn:
        if (status := conn.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
            return [f"{rows.ITEMS_DB}: {status}"]
        live = set(rows.live_ids(conn, version).tolist())
        removed = set(rows.removed_ids(conn, version).tolist())
    problems = []
    if missing := live - seg_ids:
        problems.append(f"{len(missing)} items have no vector (ids {sorted(missing)[:10]})")
    if orphans := seg_ids - live - removed:
        problems.append(f"{len(orphans)} vectors have no item (ids {sorted(orphans)[:10]})")
    if manifest["counts"]["items"] != len(live):
        problems.append(f"the manifest counts {manifest['counts']['items']} items, SQLite has {len(live)} at version {version}")
    return problems
