"""Writing an index: one writer at a time stages changes against the live version and commits the next one.

A commit writes, in order: the new segment file, the SQLite rows stamped with the new version, the new manifest,
and last CURRENT. Until CURRENT names the new manifest nothing is visible; a writer that dies before that leaves
leftovers that the next writer removes before it starts (`_recover`). A write costs time proportional to what it
changes: new vectors go to a new segment, removals are stamps in SQLite filtered inside FAISS at search time.
Rebuilding is a commit too: every live item is removed and the new collection added under new ids, so ids are
never reused, readers move over at their next refresh, and a rebuild can never race a concurrent writer.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simengine.errors import SimengineError
from simengine.index import faiss_factory, index_choice, items_db
from simengine.index.lock import DEFAULT_TIMEOUT_S, WriterLock
from simengine.index.store import (
    FORMAT_VERSION, GRACE_S, MANIFESTS, MODEL, SEGMENTS, TMP_SUFFIX, IndexDir, fsync_dir, now_iso,
)

log = logging.getLogger(__name__)

MODELS = "models"  # bundles that replaced the first one (`model/`) in a rebuild, by hash


def create_empty(folder: Path, model) -> None:
    """Lay out an index with no items (version 0) in the new directory `folder`, holding a copy of `model`."""
    folder.mkdir(parents=True)
    for sub in (MANIFESTS, SEGMENTS):
        (folder / sub).mkdir()
    _copy_bundle(model.path, folder / MODEL)
    conn = items_db.connect(folder, create=True)
    try:
        items_db.create(conn)
    finally:
        conn.close()
    store = IndexDir(folder)
    store.write_manifest({
        "format_version": FORMAT_VERSION, "version": 0, "index_uuid": uuid.uuid4().hex, "created_at": now_iso(),
        "committed_at": now_iso(), "committed_unix": time.time(), "operation": "create",
        "model": _model_identity(model), "model_dir": MODEL, "dim": model.dim,
        "metric": "inner_product (cosine on L2-normalised vectors)", "calibration": model.calibration.to_dict(),
        "index_type": "auto", "next_id": 0, "compacted_at": 0, "segments": [],
        "counts": {"items": 0, "removed": 0, "vectors": 0}, "build": {},
    })
    store.point_current_at(0)


def _copy_bundle(source: Path, target: Path) -> None:
    """copytree, whose failures (a full disk, say) come as one list of every file's error: report the first, once.
    A bundle's general twin stays behind: the index uses the bundle it was given, whichever that is."""
    from simengine.model.general import GENERAL_DIR

    try:
        shutil.copytree(source, target, ignore=lambda folder, names: [GENERAL_DIR] if Path(folder) == source else [])
    except shutil.Error as exc:
        _, _, why = exc.args[0][0]
        raise SimengineError(f"cannot copy the model bundle into {target}: {why}") from None


def _model_identity(model) -> dict[str, Any]:
    return {"hash": model.hash} | {k: v for k, v in model.config.items() if k not in ("holdout_sha256", "calibration")}


class IndexWriter:
    """`with IndexWriter(path) as w: w.add(...); w.remove(...); w.commit("what")` makes one new version."""

    def __init__(self, folder: str | os.PathLike, timeout_s: float = DEFAULT_TIMEOUT_S, grace_s: float = GRACE_S):
        self.store = IndexDir(folder)
        self.store.require_format()
        self.lock = WriterLock(self.store.root, timeout_s)
        self.grace_s = grace_s

    def __enter__(self) -> "IndexWriter":
        self.lock.__enter__()
        try:
            self.base = self.store.read_manifest(self.store.current_version())
            self.version = self.base["version"] + 1
            self.conn = items_db.connect(self.store.root)
            self._recover()
        except BaseException:
            self.lock.__exit__(None, None, None)
            raise
        self._added_vectors: list[np.ndarray] = []
        self._added_rows: list[dict[str, Any]] = []
        self._removed: set[int] = set()
        self._next_id = int(self.base["next_id"])
        self._changes: dict[str, Any] = {}
        self._compact = False
        self._replacing = False
        self._streamed_items = 0
        self._streamed_segments: list[dict[str, Any]] | None = None
        self._written: list[Path] = []
        self.committed: dict[str, Any] | None = None
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.committed is None:
                self._undo()
        finally:
            self.conn.close()
            self.lock.__exit__(None, None, None)

    # --- staging ------------------------------------------------------------------------------------------------

    def live_ids_by_sha(self, shas: Sequence[str]) -> dict[str, int]:
        """Live items with these content hashes, including the ones staged in this write."""
        found = items_db.live_ids_by_sha(self.conn, self.base["version"], shas)
        wanted = set(shas)
        found.update({r["sha256"]: r["id"] for r in self._added_rows if r["sha256"] in wanted})
        return {sha: i for sha, i in found.items() if i not in self._removed}

    def live_ids_by_path(self, path: str) -> list[int]:
        return items_db.live_ids_by_path(self.conn, self.base["version"], path)

    def add(self, vectors: np.ndarray, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Stage rows (without ids) and their vectors; returns the ids given to them, never used before."""
        if len(vectors) != len(rows):
            raise ValueError(f"{len(vectors)} vectors for {len(rows)} rows")
        dim = self._changes.get("dim", self.base["dim"])
        if len(rows) and vectors.shape[1] != dim:
            raise SimengineError(f"vectors of dim {vectors.shape[1]}, the index holds dim {dim}")
        ids = list(range(self._next_id, self._next_id + len(rows)))
        self._next_id += len(rows)
        self._added_rows.extend(dict(row, id=i) for row, i in zip(rows, ids))
        self._added_vectors.append(np.asarray(vectors, np.float32))
        return ids

    def remove(self, ids: Sequence[int]) -> None:
        live = items_db.get(self.conn, self.base["version"], ids)
        if missing := sorted(set(int(i) for i in ids) - set(live)):
            raise SimengineError(f"no item with id {missing[0]} in {self.store.root}")
        self._removed.update(int(i) for i in ids)

    def set_calibration(self, calibration: dict[str, Any]) -> None:
        self._changes["calibration"] = calibration

    def compact(self) -> None:
        """Rewrite every segment into one, without removed vectors, of the type the index's size calls for."""
        self._compact = True

    def replace_all(self, vectors: np.ndarray, rows: Sequence[dict[str, Any]], model, calibration: dict[str, Any],
                    index_type: str, build_info: dict[str, Any]) -> list[int]:
        """Stage a new collection in place of the current one, embedded by `model` (which may differ from the
        index's): every live item is removed, `rows` are added under new ids, into one segment of `index_type`."""
        self._stage_replacement(model, calibration, index_type, build_info)
        return self.add(vectors, rows)

    def replace_streamed(self, model, calibration: dict[str, Any], index_type: str, build_info: dict[str, Any]) -> None:
        """Stage a new collection too large to hold: its rows come in batches (`insert_rows`, written to SQLite at
        once, invisible until the commit) and its FAISS segments are built by the caller (`save_segment`)."""
        self._stage_replacement(model, calibration, index_type, build_info)
        self._streamed_segments = []

    def _stage_replacement(self, model, calibration: dict[str, Any], index_type: str, build_info: dict[str, Any]) -> None:
        index_choice.check_type(index_type)  # an unknown type fails here, before anything is written
        self._removed.update(items_db.live_ids(self.conn, self.base["version"]).tolist())
        model_dir = self.base["model_dir"]
        if model.hash != self.base["model"]["hash"]:
            model_dir = f"{MODELS}/{model.hash[:16]}"
            self._place_model(model, self.store.root / model_dir)
        self._changes.update(model=_model_identity(model), model_dir=model_dir, dim=model.dim, calibration=calibration,
                             index_type=index_type, build=build_info)
        self._replacing = True

    def insert_rows(self, rows: Sequence[dict[str, Any]]) -> range:
        """Write rows (without ids) of a streamed replacement; returns the ids given to them, consecutive."""
        if self._streamed_segments is None:
            raise SimengineError("insert_rows belongs to a streamed replacement (replace_streamed)")
        ids = range(self._next_id, self._next_id + len(rows))
        items_db.insert(self.conn, [dict(row, id=i) for row, i in zip(rows, ids)], self.version)
        self._next_id += len(rows)
        self._streamed_items += len(rows)
        return ids

    def save_segment(self, index, kind: str, template: str | None = None) -> dict[str, Any]:
        """Write a FAISS index built by the caller as a segment of a streamed replacement. `template` names the
        trained empty index it grew from: segments of one template can be merged list by list."""
        if self._streamed_segments is None:
            raise SimengineError("save_segment belongs to a streamed replacement (replace_streamed)")
        record = self._save_index(index, kind, faiss_factory.ids_of(index), template)
        self._streamed_segments.append(record)
        return record

    def _place_model(self, model, target: Path) -> None:
        """A complete copy of `model`'s bundle at `target`: copied beside, then renamed, so no crash leaves half."""
        from simengine.model.bundle import bundle_hash

        if target.is_dir():
            try:
                if bundle_hash(target) == model.hash:
                    return
            except (OSError, ValueError, TypeError, AttributeError):
                pass  # damaged: replaced below
            shutil.rmtree(target)  # a bundle left damaged (an interrupted gc, say)
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:6]}{TMP_SUFFIX}")
        self._written.append(staging)
        _copy_bundle(model.path, staging)
        os.rename(staging, target)
        self._written.append(target)

    # --- commit -------------------------------------------------------------------------------------------------

    def commit(self, operation: str) -> dict[str, Any]:
        version, policy = self.version, self._changes.get("index_type", self.base["index_type"])
        vectors = np.concatenate(self._added_vectors) if self._added_vectors else None
        ids = np.array([r["id"] for r in self._added_rows], np.int64)
        items_db.insert(self.conn, self._added_rows, version)
        with self.conn:
            items_db.mark_removed(self.conn, sorted(self._removed), version)
        compacted_at = self.base["compacted_at"]
        if self._streamed_segments is not None:
            if self._added_rows:
                raise SimengineError("a streamed replacement takes rows by insert_rows, not add")
            segments = sorted(self._streamed_segments, key=lambda s: s["id_min"])
            compacted_at = version
        elif self._replacing:  # every earlier item is removed: their segments are not even read
            segments = [self._write_segment(vectors, ids, self._choose(len(ids), policy))] if len(ids) else []
            compacted_at = version
        elif self._compact:
            segments = self._merge(self.base["segments"], policy, staged=(ids, vectors))
            compacted_at = version
        else:
            segments = list(self.base["segments"])
            if len(ids):
                segments.append(self._write_segment(vectors, ids, self._choose(len(ids), _delta_policy(policy))))
            segments = self._merge_small_tail(segments, _delta_policy(policy))
        items = self.base["counts"]["items"] + len(self._added_rows) + self._streamed_items - len(self._removed)
        n_vectors = sum(s["vectors"] for s in segments)
        manifest = dict(self.base, **self._changes, version=version, committed_at=now_iso(), committed_unix=time.time(),
                        operation=operation, next_id=self._next_id, compacted_at=compacted_at, segments=segments,
                        counts={"items": items, "removed": n_vectors - items, "vectors": n_vectors})
        self.store.write_manifest(manifest)
        self.store.point_current_at(version)
        self.committed = manifest
        try:
            self.collect_garbage()
        except (OSError, SimengineError, sqlite3.Error) as exc:  # the commit stands; the next write retries
            log.warning("%s: version %d committed, cleaning old versions failed: %s", self.store.root, version, exc)
        return manifest

    def _choose(self, n: int, policy: str) -> str:
        return index_choice.choose(n, self._changes.get("dim", self.base["dim"]), policy).kind

    def _write_segment(self, vectors: np.ndarray, ids: np.ndarray, kind: str) -> dict[str, Any]:
        return self._save_index(faiss_factory.build(vectors, ids, kind), kind, ids)

    def _save_index(self, index, kind: str, ids: np.ndarray, template: str | None = None) -> dict[str, Any]:
        import faiss

        name = self.store.new_segment_name(self.version)
        path = self.store.segment_path(name)
        self._written.append(path)
        faiss.write_index(index, str(path))
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        fsync_dir(path.parent)
        return self.store.segment_record(name, kind, ids) | ({"template": template} if template else {})

    def _merge(self, segments: list[dict[str, Any]], policy: str,
               staged: tuple[np.ndarray, np.ndarray | None] | None = None) -> list[dict[str, Any]]:
        """One segment holding the live vectors of `segments` (and of `staged` (ids, vectors), not yet written) as of
        this version (cost: their size); none if empty. A trained segment first in line (IVF, built from embeddings
        within a memory budget) takes the others in: its removed vectors are dropped and theirs added, so the merge
        needs no retraining and no more memory than the index itself."""
        import faiss

        removed = items_db.removed_ids(self.conn, self.version)
        if segments and segments[0].get("template"):
            return self._merge_into_trained(segments, removed, staged)
        parts_ids, parts_vectors = [], []
        if staged is not None and len(staged[0]):
            parts_ids.append(staged[0])
            parts_vectors.append(staged[1])
        for segment in segments:
            ids, vectors = faiss_factory.contents(faiss.read_index(str(self.store.segment_path(segment["file"]))))
            keep = ~np.isin(ids, removed)
            parts_ids.append(ids[keep])
            parts_vectors.append(vectors[keep])
        ids = np.concatenate(parts_ids) if parts_ids else np.zeros(0, np.int64)
        if len(ids) == 0:
            return []
        order = np.argsort(ids, kind="stable")
        ids, vectors = ids[order], np.concatenate(parts_vectors)[order]
        return [self._write_segment(vectors, ids, self._choose(len(ids), policy))]

    def _merge_into_trained(self, segments: list[dict[str, Any]], removed: np.ndarray,
                            staged: tuple[np.ndarray, np.ndarray | None] | None) -> list[dict[str, Any]]:
        import faiss

        first = segments[0]
        index = faiss.read_index(str(self.store.segment_path(first["file"])))
        faiss_factory.drop_id_map(index)  # rebuilt by `finish` once the lists are final
        for segment in segments[1:]:
            other = faiss.read_index(str(self.store.segment_path(segment["file"])))
            if segment.get("template") == first["template"]:
                faiss_factory.merge_lists(index, other)  # the same trained quantizer: codes move as they are
            else:
                ids, vectors = faiss_factory.contents(other)
                faiss_factory.add(index, vectors, ids)
            del other
        if staged is not None and len(staged[0]):
            faiss_factory.add(index, staged[1], staged[0])
        if len(removed):  # last: whatever came from any segment
            index.remove_ids(faiss_factory.only(removed))
        if index.ntotal == 0:
            return []
        faiss_factory.finish(index)
        return [self._save_index(index, first["type"], faiss_factory.ids_of(index), first.get("template"))]

    def _merge_small_tail(self, segments: list[dict[str, Any]], policy: str) -> list[dict[str, Any]]:
        """Merge the newest segments with the ones before them while each of those is at most twice the size of what
        follows it (never the base). Sizes then fall geometrically, so an index holds O(log n) segments and each
        vector is rewritten O(log n) times: a write stays proportional to its change, amortised."""
        tail = 1
        while len(segments) - tail >= 2 and segments[-tail - 1]["vectors"] <= 2 * sum(
                s["vectors"] for s in segments[-tail:]):
            tail += 1
        if tail == 1:
            return segments
        return segments[:-tail] + self._merge(segments[-tail:], policy)

    # --- recovery and garbage -----------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Remove what a writer that died before its commit left behind: rows and manifests (files: `collect_garbage`)."""
        live = self.base["version"]
        if touched := items_db.roll_back_after(self.conn, live):
            log.warning("%s: rolled back %d rows of an unfinished write", self.store.root, touched)
        for v in self.store.manifest_versions():
            if v > live:
                self.store.manifest_path(v).unlink(missing_ok=True)

    def _undo(self) -> None:
        if self.store.current_version() == self.version:
            return  # CURRENT was replaced, so the version is committed, even if what followed was interrupted
        for path in self._written:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        items_db.roll_back_after(self.conn, self.base["version"])
        self.store.manifest_path(self.version).unlink(missing_ok=True)

    def collect_garbage(self) -> dict[str, int]:
        """Delete versions replaced more than `grace_s` ago, and the segment files, model bundles, rows and temporary
        files that no kept version uses. Safe only here, under the writer lock."""
        store, current = self.store, self.store.current_version()
        versions = [v for v in store.manifest_versions() if v <= current]
        manifests = {v: _read_or_none(store, v) for v in versions}
        now, kept, dropped = time.time(), [], 0
        replaced_at = now
        for v in reversed(versions):  # newest first: each version was replaced when the next one was committed
            manifest = manifests[v]
            if v == current or (manifest is not None and now - replaced_at < self.grace_s):
                kept.append(manifest)
            else:
                store.manifest_path(v).unlink(missing_ok=True)
                dropped += 1
            if manifest is not None:
                replaced_at = manifest["committed_unix"]
        kept = [m for m in kept if m is not None]
        if not kept:
            return {"versions": dropped, "segments": 0, "rows": 0}
        used = {s["file"] for m in kept for s in m["segments"]}
        segments = 0
        for path in (store.root / SEGMENTS).glob("*"):
            if path.name not in used:
                path.unlink(missing_ok=True)
                segments += 1
        used_models = {m["model_dir"] for m in kept}
        for path in [store.root / MODEL, *(store.root / MODELS).glob("[!.]*")]:
            if path.is_dir() and path.relative_to(store.root).as_posix() not in used_models:
                shutil.rmtree(path)
        for folder in (store.root, store.root / MANIFESTS, store.root / MODELS):
            for path in folder.glob(f".*{TMP_SUFFIX}"):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        rows = items_db.purge_removed(self.conn, min(m["compacted_at"] for m in kept))
        return {"versions": dropped, "segments": segments, "rows": rows}


def _read_or_none(store: IndexDir, version: int) -> dict[str, Any] | None:
    try:
        return store.read_manifest(version)
    except SimengineError:
        return None


def _delta_policy(policy: str) -> str:
    """Segments beside the base are too small to train IVF on; they follow the size rule instead."""
    return "auto" if policy in index_choice.TRAINED_TYPES else policy
