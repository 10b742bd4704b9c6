"""Reading a store: a consistent snapshot of one committed version, moved forward by `refresh()`."""

from __future__ import annotations

import bisect
import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simengine.errors import IndexUnusableError, SimengineError
from simengine.files import sha256_file
from simengine.store import faiss_factory, rows
from simengine.store.layout import StoreDir

OPEN_ATTEMPTS = 3
# A filter selecting at most this many floats of vectors (20 MB: 20k items at 256-d) is searched exactly.
EXACT_FILTER_FLOATS = 5_000_000


class StoreReader:
    """FAISS segments and SQLite rows of one version. Writers never disturb it: segment files are immutable and rows
    are filtered by version. `refresh()` (cheap when nothing changed) moves it to the newest committed version."""

    def __init__(self, path: str | os.PathLike):
        """Open the live version; segments whose sizes or counts disagree with the manifest are refused."""
        self.store = StoreDir(path)
        self.path = Path(path)
        self.store.require_format()
        self.manifest: dict[str, Any] = {}
        self._segments: dict[str, Any] = {}
        self._order: list[str] = []
        self._token: tuple | None = None
        self.conn = rows.connect(self.path)
        self._db_identity = rows.identity(self.path)
        self.refresh()

    # --- versions -----------------------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Move to the newest committed version; True when it changed. Cheap when nothing did (one small read of
        CURRENT); segments already open are reused."""
        token = self.store.current_token()
        if token == self._token:
            return False
        # Another directory put at this path (a restored backup, an rsync) has its own items.db: reconnect to it.
        moved = self._db_identity != rows.identity(self.path)
        failures = 0
        while True:
            version = self.store.current_version()
            try:
                manifest = self.store.read_manifest(version)
                same = self.manifest and not moved and (manifest["version"], manifest["index_uuid"]) == (
                    self.manifest["version"], self.manifest["index_uuid"])
                if not same:
                    other = bool(self.manifest) and manifest["index_uuid"] != self.manifest["index_uuid"]
                    self._load(manifest, reconnect=moved or other)
                self._token = token
                return not same
            except (FileNotFoundError, IndexUnusableError):
                # Files of a version replaced long ago can vanish under a reader that was slow to open them;
                # a newer version is then named by CURRENT. Anything else is a real problem.
                failures += 1
                if failures == OPEN_ATTEMPTS or self.store.current_version() == version:
                    raise

    def _load(self, manifest: dict[str, Any], reconnect: bool) -> None:
        """Open what `manifest` lists, then switch to it all at once (a failure leaves the old snapshot whole)."""
        conn, reuse = self.conn, self._segments
        if reconnect:
            conn, reuse = rows.connect(self.path), {}
        try:
            db_identity = rows.identity(self.path)
            held = self._held(manifest["segments"])
            segments = {s["file"]: reuse.get(s["file"]) or self._open_segment(s, manifest["dim"]) for s in held}
            try:
                excluded = rows.removed_ids(conn, manifest["version"])
            except sqlite3.DatabaseError as exc:
                raise IndexUnusableError(f"{self.path / rows.ITEMS_DB}: {exc}; run `simengine index verify`") from None
            derived = self._derive(manifest)
        except BaseException:
            if conn is not self.conn:
                conn.close()
            raise
        if conn is not self.conn:
            self.conn.close()
        self.conn, self._segments, self._db_identity = conn, segments, db_identity
        self._order = [s["file"] for s in held]
        self._id_starts = [s["id_min"] for s in held]
        self._selector = faiss_factory.excluding(excluded)
        self._excluded = excluded  # the selector points into this array
        self._adopt(derived)
        self.manifest = manifest

    def _derive(self, manifest: dict[str, Any]) -> Any:
        """What the layer above reads from the metadata of a version about to be opened; raising refuses it."""
        return None

    def _adopt(self, derived: Any) -> None:
        """Take what `_derive` read, once the snapshot has switched to its version."""

    def _held(self, segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The segments this reader opens and searches: all of them (a shard of a served index holds some)."""
        return segments

    def _open_segment(self, record: dict[str, Any], dim: int):
        import faiss

        path = self.store.segment_path(record["file"])
        if not path.is_file():
            raise FileNotFoundError(path)
        if (size := path.stat().st_size) != record["bytes"]:
            raise IndexUnusableError(f"{path}: {size} bytes, the manifest says {record['bytes']}; "
                                     "run `simengine index verify`")
        # Once per segment and reader (segments are immutable, and kept open across versions): a few changed bytes
        # keep the size and may still load, and would then answer with nonsense distances.
        if sha256_file(path) != record["sha256"]:
            raise IndexUnusableError(f"{path}: its bytes differ from the manifest's sha256 (damaged on disk); "
                                     "run `simengine index verify`")
        try:
            segment = faiss.read_index(str(path))
        except RuntimeError:
            raise IndexUnusableError(f"{path}: corrupt FAISS file; run `simengine index verify`") from None
        if segment.ntotal != record["vectors"] or segment.d != dim:
            raise IndexUnusableError(f"{path}: {segment.ntotal} vectors of dim {segment.d}, the manifest says "
                                     f"{record['vectors']} of dim {dim}")
        return segment

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def attached_dir(self) -> Path:
        """The directory attached to this version (an index's model bundle)."""
        return self.store.attached_dir(self.manifest)

    def __len__(self) -> int:
        return int(self.manifest["counts"]["items"])

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "StoreReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reading ------------------------------------------------------------------------------------------------

    def item(self, item_id: int) -> dict[str, Any]:
        found = rows.get(self.conn, self.version, [item_id])
        if not found:
            raise SimengineError(f"no item with id {item_id} in {self.path}")
        return found[int(item_id)]

    def items(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        return rows.get(self.conn, self.version, ids)

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored embeddings of live items, in the order of `ids`."""
        ids = np.asarray(ids, np.int64)
        out = np.zeros((len(ids), self.manifest["dim"]), np.float32)
        if len(ids) == 0:
            return out
        removed = np.isin(ids, self._excluded)
        if removed.any():
            raise SimengineError(f"item {ids[removed][0]} was removed from {self.path}")
        where = np.array([bisect.bisect_right(self._id_starts, int(i)) - 1 for i in ids])
        for seg in set(where.tolist()):
            rows = np.flatnonzero(where == seg)
            try:
                if seg < 0:
                    raise RuntimeError("below every segment")
                out[rows] = self._segments[self._order[seg]].reconstruct_batch(ids[rows])
            except RuntimeError:
                raise SimengineError(f"no vector for id {int(ids[rows][0])} in {self.path}") from None
        return out

    def search(self, queries: np.ndarray, k: int, where: str | None = None,
               params: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids) of the k nearest live items per query, best first; removed items never appear.
        `where` (an SQL condition over the items' columns, values bound from `params`) restricts the search to the
        items it selects before searching, never by filtering a short list afterwards."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        if where is None:
            return self.search_segments(queries, min(k, len(self)))
        allowed = self.ids_where(where, params)
        k_eff = min(k, len(allowed))
        if 0 < len(allowed) * self.manifest["dim"] <= EXACT_FILTER_FLOATS:
            # Graph and list searches lose recall when most of what they visit is filtered out; a few vectors are
            # cheaper to compare exactly anyway.
            return faiss_factory.exact_search(queries, self.vectors(allowed), allowed, k_eff)
        return self.search_segments(queries, k_eff, allowed)

    def search_segments(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
        """The k best of the segments held, among `allowed` ids (None: every live one)."""
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        selector, fraction = self._selector, 1.0
        if allowed is not None:
            selector, fraction = faiss_factory.only(allowed), len(allowed) / max(len(self), 1)
        found = [faiss_factory.search(self._segments[name], queries, min(k, self._segments[name].ntotal), selector,
                                      fraction) for name in self._order if self._segments[name].ntotal]
        return merge_best(found, k, len(queries))

    def ids_where(self, where: str, params: dict[str, Any] | None = None) -> np.ndarray:
        """Live ids of this version selected by an SQL condition (see `rows.ids_where`)."""
        ids = rows.ids_where(self.conn, self.version, where, params)
        # Only this snapshot's live items, whatever the condition's text does to the SQL around it.
        return ids[~np.isin(ids, self._excluded) & (ids < self.manifest["next_id"])]

    def info(self) -> dict[str, Any]:
        """What the store holds at this version: counts, segments, size on disk, when it was made."""
        m = self.manifest
        return {
            "path": str(self.path),
            "version": m["version"],
            "items": len(self),
            "removed_not_compacted": m["counts"]["removed"],
            "segments": len(m["segments"]),
            "next_id": m["next_id"],
            "index_type": m["index_type"],
            "segment_types": sorted({s["type"] for s in m["segments"]}),
            "dim": m["dim"],
            "size_bytes": _disk_bytes(self.path),
            "created_at": m["created_at"],
            "committed_at": m["committed_at"],
            "last_operation": m["operation"],
        }


def merge_best(found: Sequence[tuple[np.ndarray, np.ndarray]], k: int, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (similarities, ids) per query of several searches' results; -1 pads rows with fewer than k."""
    if not found:
        return np.full((n_queries, k), -np.inf, np.float32), np.full((n_queries, k), -1, np.int64)
    sims, ids = np.concatenate([s for s, _ in found], axis=1), np.concatenate([i for _, i in found], axis=1)
    sims = np.where(ids >= 0, sims, -np.inf)
    best = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    out_s, out_i = np.take_along_axis(sims, best, 1), np.take_along_axis(ids, best, 1)
    out_i[~np.isfinite(out_s)] = -1
    return out_s.astype(np.float32), out_i.astype(np.int64)


def _disk_bytes(folder: Path) -> int:
    """Bytes of the files under `folder`; a writer's temporary file may vanish while they are counted."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_size
    return total
