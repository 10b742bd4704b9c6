"""Writing an index: one writer at a time stages changes against the live version and commits the next one.

A commit writes, in order: the new segment file, the SQLite rows stamped with the new version, the new manifest,
and last CURRENT. Until CURRENT names the new manifest nothing is visible; a writer that dies before that leaves
leftovers that the next writer removes before it starts (`_recover`). A write costs time proportional to what it
changes: new vectors go to a new segment, removals are stamps in SQLite filtered inside FAISS at search time.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simengine.errors import SimengineError
from simengine.index import faiss_factory, items_db
from simengine.index.lock import DEFAULT_TIMEOUT_S, WriterLock
from simengine.index.store import FORMAT_VERSION, GRACE_S, IndexDir, now_iso

log = logging.getLogger(__name__)

# More segments than this and the ones after the first (the base) are merged into one at commit.
MAX_SEGMENTS = 8


def _write_segment(store: IndexDir, version: int, vectors: np.ndarray, ids: np.ndarray, kind: str,
                   seed: int = 0) -> dict[str, Any]:
    import faiss

    name = store.new_segment_name(version)
    path = store.segment_path(name)
    path.parent.mkdir(exist_ok=True)
    faiss.write_index(faiss_factory.build(vectors, ids, kind, seed), str(path))
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
    return store.segment_record(name, kind, ids)


def new_index(folder: Path, vectors: np.ndarray, rows: list[dict[str, Any]], manifest: dict[str, Any],
              index_type: str, seed: int = 0) -> None:
    """Write version 1 of a new index into the empty directory `folder` (whose model/ is already in place)."""
    store = IndexDir(folder)
    (folder / "manifests").mkdir(parents=True)
    ids = np.array([r["id"] for r in rows], np.int64)
    kind = faiss_factory.choose_type(len(ids), index_type)
    segment = _write_segment(store, 1, vectors, ids, kind, seed)
    conn = items_db.connect(folder)
    try:
        items_db.create(conn)
        with conn:
            items_db.insert(conn, rows, 1)
    finally:
        conn.close()
    manifest = dict(manifest, format_version=FORMAT_VERSION, version=1, committed_at=now_iso(),
                    committed_unix=time.time(), operation="build", index_type=index_type, next_id=int(ids.max()) + 1,
                    compacted_at=1, segments=[segment],
                    counts={"items": len(rows), "removed": 0, "vectors": len(rows)})
    store.write_manifest(manifest)
    store.point_current_at(1)


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
        self._calibration: dict[str, Any] | None = None
        self._compact = False
        self._written: list[str] = []
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
        if len(rows) and vectors.shape[1] != self.base["dim"]:
            raise SimengineError(f"vectors of dim {vectors.shape[1]}, the index holds dim {self.base['dim']}")
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
        self._calibration = calibration

    def compact(self) -> None:
        """Rewrite every segment into one, without removed vectors, of the type the index's size calls for."""
        self._compact = True

    # --- commit -------------------------------------------------------------------------------------------------

    def commit(self, operation: str) -> dict[str, Any]:
        version, store = self.version, self.store
        segments = list(self.base["segments"])
        vectors = np.concatenate(self._added_vectors) if self._added_vectors else np.zeros((0, self.base["dim"]), np.float32)
        if len(self._added_rows):
            ids = np.array([r["id"] for r in self._added_rows], np.int64)
            kind = faiss_factory.choose_type(len(ids), _delta_policy(self.base["index_type"]))
            segments.append(self._track(_write_segment(store, version, vectors, ids, kind)))
        with self.conn:
            items_db.insert(self.conn, self._added_rows, version)
            items_db.mark_removed(self.conn, sorted(self._removed), version)
        compacted_at = self.base["compacted_at"]
        if self._compact:
            segments = self._merge(segments, self.base["index_type"])
            compacted_at = version
        elif len(segments) > MAX_SEGMENTS:
            segments = segments[:1] + self._merge(segments[1:], _delta_policy(self.base["index_type"]))
        items = self.base["counts"]["items"] + len(self._added_rows) - len(self._removed)
        n_vectors = sum(s["vectors"] for s in segments)
        manifest = dict(self.base, version=version, committed_at=now_iso(), committed_unix=time.time(),
                        operation=operation, next_id=self._next_id, compacted_at=compacted_at, segments=segments,
                        counts={"items": items, "removed": n_vectors - items, "vectors": n_vectors})
        if self._calibration is not None:
            manifest["calibration"] = self._calibration
        store.write_manifest(manifest)
        store.point_current_at(version)
        self.committed = manifest
        self.collect_garbage()
        return manifest

    def _track(self, segment: dict[str, Any]) -> dict[str, Any]:
        self._written.append(segment["file"])
        return segment

    def _merge(self, segments: list[dict[str, Any]], policy: str) -> list[dict[str, Any]]:
        """One segment holding the live vectors of `segments` as of this version (cost: their size); none if empty."""
        import faiss

        removed = items_db.removed_ids(self.conn, self.version)
        parts_ids, parts_vectors = [], []
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
        kind = faiss_factory.choose_type(len(ids), policy)
        return [self._track(_write_segment(self.store, self.version, vectors, ids, kind))]

    # --- recovery and garbage -----------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Remove what a writer that died before its commit left behind: rows, manifests and segment files."""
        live = self.base["version"]
        if touched := items_db.roll_back_after(self.conn, live):
            log.warning("%s: rolled back %d rows of an unfinished write", self.store.root, touched)
        for v in self.store.manifest_versions():
            if v > live:
                self.store.manifest_path(v).unlink(missing_ok=True)

    def _undo(self) -> None:
        for name in self._written:
            self.store.segment_path(name).unlink(missing_ok=True)
        items_db.roll_back_after(self.conn, self.base["version"])
        self.store.manifest_path(self.version).unlink(missing_ok=True)

    def collect_garbage(self) -> dict[str, int]:
        return collect_garbage_locked(self.store, self.conn, self.grace_s)


def _delta_policy(policy: str) -> str:
    """Segments beside the base are too small to train IVF on; they follow the size rule instead."""
    return "auto" if policy == "ivf" else policy


def collect_garbage_locked(store: IndexDir, conn, grace_s: float) -> dict[str, int]:
    """Delete versions replaced more than `grace_s` ago, segment files no kept version lists, and rows no kept
    version can see. Runs only under the writer lock."""
    current = store.current_version()
    versions = store.manifest_versions()
    manifests = {}
    for v in versions:
        try:
            manifests[v] = store.read_manifest(v)
        except SimengineError:
            manifests[v] = None
    now = time.time()
    kept, dropped = [current], 0
    for v in versions:
        if v >= current:
            continue
        later = [manifests[w] for w in versions if w > v and manifests[w] is not None]
        replaced_at = later[0]["committed_unix"] if later else now
        if manifests[v] is not None and now - replaced_at < grace_s:
            kept.append(v)
        else:
            store.manifest_path(v).unlink(missing_ok=True)
            dropped += 1
    referenced = {s["file"] for v in kept if manifests.get(v) for s in manifests[v]["segments"]}
    segments = 0
    folder = store.root / "segments"
    for path in folder.iterdir() if folder.is_dir() else []:
        if path.name not in referenced:
            path.unlink(missing_ok=True)
            segments += 1
    rows = items_db.purge_removed(conn, min(manifests[v]["compacted_at"] for v in kept if manifests.get(v)))
    return {"versions": dropped, "segments": segments, "rows": rows}
