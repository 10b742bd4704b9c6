"""Writing a store: one writer at a time stages changes against the live version and commits the next one.

A commit writes, in order: the SQLite rows stamped with the new version, the new segment files, the new manifest,
and last CURRENT. Until CURRENT names the new manifest nothing is visible; a writer that dies before that leaves
leftovers that the next writer removes before it starts. A write costs time proportional to what it changes: new
vectors go to a new segment, removals are stamps in SQLite filtered inside FAISS at search time. Replacing the
whole collection is a commit too: every live item is removed and the new collection added under new ids, so ids
are never reused, readers move over at their next refresh, and a rebuild can never race a concurrent writer.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from simengine.errors import SimengineError
from simengine.files import TMP_SUFFIX
from simengine.store import faiss_factory, garbage, index_choice, rows
from simengine.store.layout import (
    ATTACHED, ATTACHED_BY_DIGEST, FORMAT_VERSION, GRACE_S, MANIFESTS, SEGMENTS, StoreDir, now_iso,
)
from simengine.store.lock import DEFAULT_TIMEOUT_S, WriterLock
from simengine.store.segments import SegmentFiles, merge, merge_small_tail

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attachment:
    """A directory a version carries (an index's model bundle): copied in whole, named by its content digest.
    `intact` tells whether a copy already at the target is whole (a damaged one is replaced)."""

    source: Path
    digest: str
    skip: tuple[str, ...] = ()  # top-level names not copied
    intact: Callable[[Path], bool] = lambda folder: False
    what: str = "the attached folder"  # in messages


@dataclass(frozen=True)
class RowSchema:
    """The fixed columns of a store's rows (name: Python type), those never NULL and those looked up by value."""

    columns: dict[str, type]
    not_null: tuple[str, ...] = ()
    indexed: tuple[str, ...] = ()


def create_empty(folder: Path, dim: int, schema: RowSchema, attachment: Attachment,
                 metadata: dict[str, Any]) -> None:
    """Lay out a store with no items (version 0) in the new directory `folder`, holding a copy of `attachment` and
    the caller's JSON `metadata` in its manifest."""
    folder.mkdir(parents=True)
    for sub in (MANIFESTS, SEGMENTS):
        (folder / sub).mkdir()
    _copy_tree(attachment, folder / ATTACHED)
    conn = rows.connect(folder, create=True)
    try:
        rows.create(conn, schema.columns, schema.not_null, schema.indexed)
    finally:
        conn.close()
    store = StoreDir(folder)
    store.write_manifest({
        "format_version": FORMAT_VERSION, "version": 0, "index_uuid": uuid.uuid4().hex, "created_at": now_iso(),
        "committed_at": now_iso(), "committed_unix": time.time(), "operation": "create", **metadata,
        "model_dir": ATTACHED, "dim": dim, "metric": "inner_product (cosine on L2-normalised vectors)",
        "index_type": "auto", "next_id": 0, "compacted_at": 0, "segments": [],
        "counts": {"items": 0, "removed": 0, "vectors": 0}, "build": metadata.get("build", {}),
    })
    store.point_current_at(0)


def _copy_tree(attachment: Attachment, target: Path) -> None:
    """copytree, whose failures (a full disk, say) come as one list of every file's error: report the first, once."""
    source = attachment.source
    try:
        shutil.copytree(source, target,
                        ignore=lambda folder, names: list(attachment.skip) if Path(folder) == source else [])
    except shutil.Error as exc:
        _, _, why = exc.args[0][0]
        raise SimengineError(f"cannot copy {attachment.what} into {target}: {why}") from None


class StoreWriter:
    """`with StoreWriter(path) as w: w.add(...); w.remove(...); w.commit("what")` makes one new version."""

    def __init__(self, folder: str | os.PathLike, timeout_s: float = DEFAULT_TIMEOUT_S, grace_s: float = GRACE_S):
        self.store = StoreDir(folder)
        self.store.require_format()
        self.lock = WriterLock(self.store.root, timeout_s)
        self.grace_s = grace_s

    def __enter__(self) -> "StoreWriter":
        self.lock.__enter__()
        try:
            self.base = self.store.read_manifest(self.store.current_version())
            self.version = self.base["version"] + 1
            self.conn = rows.connect(self.store.root)
            garbage.roll_back_unfinished(self.store, self.conn, self.base["version"])
        except BaseException:
            self.lock.__exit__(None, None, None)
            raise
        self._added_vectors: list[np.ndarray] = []
        self._added_rows: list[dict[str, Any]] = []
        self._removed: set[int] = set()
        self._next_id = int(self.base["next_id"])
        self._changes: dict[str, Any] = {}
        self._new_segments = self._appended
        self._streamed_items = 0
        self._streamed_segments: list[dict[str, Any]] = []
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

    def live_ids_by(self, column: str, values: Sequence[Any]) -> dict[Any, int]:
        """{value: id} of live items whose unique `column` holds one of `values`, the rows staged here included."""
        found = rows.live_ids_by(self.conn, self.base["version"], column, values)
        wanted = set(values)
        found.update({r[column]: r["id"] for r in self._added_rows if r.get(column) in wanted})
        return {value: i for value, i in found.items() if i not in self._removed}

    def live_ids_with(self, column: str, value: Any) -> list[int]:
        return rows.live_ids_with(self.conn, self.base["version"], column, value)

    def add(self, vectors: np.ndarray, new_rows: Sequence[dict[str, Any]]) -> list[int]:
        """Stage rows (without ids) and their vectors; returns the ids given to them, never used before."""
        if len(vectors) != len(new_rows):
            raise ValueError(f"{len(vectors)} vectors for {len(new_rows)} rows")
        dim = self._changes.get("dim", self.base["dim"])
        if len(new_rows) and vectors.shape[1] != dim:
            raise SimengineError(f"vectors of dim {vectors.shape[1]}, the index holds dim {dim}")
        ids = list(range(self._next_id, self._next_id + len(new_rows)))
        self._next_id += len(new_rows)
        self._added_rows.extend(dict(row, id=i) for row, i in zip(new_rows, ids))
        self._added_vectors.append(np.asarray(vectors, np.float32))
        return ids

    def remove(self, ids: Sequence[int]) -> None:
        live = rows.get(self.conn, self.base["version"], ids)
        if missing := sorted(set(int(i) for i in ids) - set(live)):
            raise SimengineError(f"no item with id {missing[0]} in {self.store.root}")
        self._removed.update(int(i) for i in ids)

    def set_metadata(self, **fields: Any) -> None:
        """Replace keys of the manifest's JSON metadata (the layer above's: an index's calibration, say)."""
        self._changes.update(fields)

    def compact(self) -> None:
        """Rewrite every segment into one, without removed vectors, of the type the store's size calls for."""
        if self._new_segments not in (self._appended, self._compacted):
            raise SimengineError("a replaced collection is written whole already; compact it in a later write")
        self._new_segments = self._compacted

    def replace_all(self, vectors: np.ndarray, new_rows: Sequence[dict[str, Any]], dim: int, index_type: str,
                    metadata: dict[str, Any], attachment: Attachment | None = None) -> list[int]:
        """Stage a new collection in place of the current one: every live item is removed, `new_rows` are added
        under new ids, into one segment of `index_type`; `attachment` (when given) replaces the attached directory."""
        self._stage_replacement(dim, index_type, metadata, attachment)
        self._new_segments = self._replaced
        return self.add(vectors, new_rows)

    def replace_streamed(self, dim: int, index_type: str, metadata: dict[str, Any],
                         attachment: Attachment | None = None) -> None:
        """Stage a new collection too large to hold: its rows come in batches (`insert_rows`, written to SQLite at
        once, invisible until the commit) and its FAISS segments are built by the caller (`save_segment`)."""
        self._stage_replacement(dim, index_type, metadata, attachment)
        self._new_segments = self._streamed

    def _stage_replacement(self, dim: int, index_type: str, metadata: dict[str, Any],
                           attachment: Attachment | None) -> None:
        index_choice.check_type(index_type)  # an unknown type fails here, before anything is written
        self._removed.update(rows.live_ids(self.conn, self.base["version"]).tolist())
        attached = self.base["model_dir"]
        if attachment is not None:
            attached = f"{ATTACHED_BY_DIGEST}/{attachment.digest[:16]}"
            self._place(attachment, self.store.root / attached)
        self._changes.update(metadata, model_dir=attached, dim=dim, index_type=index_type)

    def insert_rows(self, new_rows: Sequence[dict[str, Any]]) -> range:
        """Write rows (without ids) of a streamed replacement; returns the ids given to them, consecutive."""
        self._require_streamed("insert_rows")
        ids = range(self._next_id, self._next_id + len(new_rows))
        rows.insert(self.conn, [dict(row, id=i) for row, i in zip(new_rows, ids)], self.version)
        self._next_id += len(new_rows)
        self._streamed_items += len(new_rows)
        return ids

    def save_segment(self, index, kind: str, template: str | None = None) -> dict[str, Any]:
        """Write a FAISS index built by the caller as a segment of a streamed replacement. `template` names the
        trained empty index it grew from: segments of one template can be merged list by list."""
        self._require_streamed("save_segment")
        record = self._files().save(index, kind, faiss_factory.ids_of(index), template)
        self._streamed_segments.append(record)
        return record

    def _require_streamed(self, what: str) -> None:
        if self._new_segments != self._streamed:
            raise SimengineError(f"{what} belongs to a streamed replacement (replace_streamed)")

    def _place(self, attachment: Attachment, target: Path) -> None:
        """A complete copy of `attachment` at `target`: copied beside, then renamed, so no crash leaves half."""
        if target.is_dir():
            if attachment.intact(target):
                return
            shutil.rmtree(target)  # left damaged (an interrupted gc, say)
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:6]}{TMP_SUFFIX}")
        self._written.append(staging)
        _copy_tree(attachment, staging)
        os.rename(staging, target)
        self._written.append(target)

    # --- commit -------------------------------------------------------------------------------------------------

    def commit(self, operation: str) -> dict[str, Any]:
        version = self.version
        vectors = np.concatenate(self._added_vectors) if self._added_vectors else None
        ids = np.array([r["id"] for r in self._added_rows], np.int64)
        rows.insert(self.conn, self._added_rows, version)
        with self.conn:
            rows.mark_removed(self.conn, sorted(self._removed), version)
        segments, rewritten = self._new_segments(ids, vectors)
        items = self.base["counts"]["items"] + len(self._added_rows) + self._streamed_items - len(self._removed)
        n_vectors = sum(s["vectors"] for s in segments)
        manifest = dict(self.base, **self._changes, version=version, committed_at=now_iso(), committed_unix=time.time(),
                        operation=operation, next_id=self._next_id,
                        compacted_at=version if rewritten else self.base["compacted_at"], segments=segments,
                        counts={"items": items, "removed": n_vectors - items, "vectors": n_vectors})
        self.store.write_manifest(manifest)
        self.store.point_current_at(version)
        self.committed = manifest
        try:
            self.collect_garbage()
        except (OSError, SimengineError, sqlite3.Error) as exc:  # the commit stands; the next write retries
            log.warning("%s: version %d committed, cleaning old versions failed: %s", self.store.root, version, exc)
        return manifest

    # Each returns the new version's segments and whether they replace every earlier one (a compaction point,
    # before which removed rows may be purged).

    def _appended(self, ids: np.ndarray, vectors: np.ndarray | None) -> tuple[list[dict[str, Any]], bool]:
        files, kind_for = self._files(), self._kind_for(_delta_policy(self._policy()))
        segments = list(self.base["segments"])
        if len(ids):
            segments.append(files.write(vectors, ids, kind_for(len(ids))))
        return merge_small_tail(files, segments, self._removed_ids, kind_for), False

    def _compacted(self, ids: np.ndarray, vectors: np.ndarray | None) -> tuple[list[dict[str, Any]], bool]:
        return merge(self._files(), self.base["segments"], self._removed_ids(), self._kind_for(self._policy()),
                     staged=(ids, vectors)), True

    def _replaced(self, ids: np.ndarray, vectors: np.ndarray | None) -> tuple[list[dict[str, Any]], bool]:
        # Every earlier item is removed: their segments are not even read.
        kind = self._kind_for(self._policy())(len(ids))
        return ([self._files().write(vectors, ids, kind)] if len(ids) else []), True

    def _streamed(self, ids: np.ndarray, vectors: np.ndarray | None) -> tuple[list[dict[str, Any]], bool]:
        if len(ids):
            raise SimengineError("a streamed replacement takes rows by insert_rows, not add")
        return sorted(self._streamed_segments, key=lambda s: s["id_min"]), True

    def _policy(self) -> str:
        return self._changes.get("index_type", self.base["index_type"])

    def _kind_for(self, policy: str) -> Callable[[int], str]:
        dim = self._changes.get("dim", self.base["dim"])
        return lambda n: index_choice.choose(n, dim, policy).kind

    def _files(self) -> SegmentFiles:
        return SegmentFiles(self.store, self.version, self._written)

    def _removed_ids(self) -> np.ndarray:
        return rows.removed_ids(self.conn, self.version)

    # --- recovery and garbage -----------------------------------------------------------------------------------

    def _undo(self) -> None:
        if self.store.current_version() == self.version:
            return  # CURRENT was replaced, so the version is committed, even if what followed was interrupted
        for path in self._written:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        rows.roll_back_after(self.conn, self.base["version"])
        self.store.manifest_path(self.version).unlink(missing_ok=True)

    def collect_garbage(self) -> dict[str, int]:
        """Delete versions replaced more than `grace_s` ago and what no kept version uses (see `garbage`)."""
        return garbage.collect_garbage(self.store, self.conn, self.grace_s)


def _delta_policy(policy: str) -> str:
    """Segments beside the base are too small to train IVF on; they follow the size rule instead."""
    return "auto" if policy in index_choice.TRAINED_TYPES else policy
