"""Segment files: writing the immutable FAISS files of one version, and merging segments (compaction).

A merge costs what it reads: the live vectors of the segments merged. A trained segment (IVF, built within a memory
budget) takes the others in list by list instead, so merging never retrains and needs no more memory than it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simengine.files import fsync_dir
from simengine.store import faiss_factory
from simengine.store.layout import StoreDir

Staged = tuple[np.ndarray, "np.ndarray | None"]  # (ids, vectors) added in this version, not written yet


class SegmentFiles:
    """Writes the segment files of one version, remembering them so that an uncommitted write can delete them."""

    def __init__(self, store: StoreDir, version: int, written: list[Path]):
        self.store, self.version, self.written = store, version, written

    def write(self, vectors: np.ndarray, ids: np.ndarray, kind: str) -> dict[str, Any]:
        """A new segment of `kind` holding `vectors` under `ids`; returns its manifest record."""
        return self.save(faiss_factory.build(vectors, ids, kind), kind, ids)

    def save(self, index, kind: str, ids: np.ndarray, template: str | None = None) -> dict[str, Any]:
        """Write a FAISS index built elsewhere as a segment; `template` names the trained empty index it grew from."""
        import faiss

        name = self.store.new_segment_name(self.version)
        path = self.store.segment_path(name)
        self.written.append(path)
        faiss.write_index(index, str(path))
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        fsync_dir(path.parent)
        return self.store.segment_record(name, kind, ids) | ({"template": template} if template else {})

    def read(self, record: dict[str, Any]):
        import faiss

        return faiss.read_index(str(self.store.segment_path(record["file"])))


def merge(files: SegmentFiles, segments: list[dict[str, Any]], removed: np.ndarray, kind_for: Callable[[int], str],
          staged: Staged | None = None) -> list[dict[str, Any]]:
    """One segment holding the vectors of `segments` not in `removed` (and the `staged` ones), of the type
    `kind_for(count)`; none if empty. A trained segment first in line takes the others in."""
    if segments and segments[0].get("template"):
        return _merge_into_trained(files, segments, removed, staged)
    parts_ids, parts_vectors = [], []
    if staged is not None and len(staged[0]):
        parts_ids.append(staged[0])
        parts_vectors.append(staged[1])
    for segment in segments:
        ids, vectors = faiss_factory.contents(files.read(segment))
        keep = ~np.isin(ids, removed)
        parts_ids.append(ids[keep])
        parts_vectors.append(vectors[keep])
    ids = np.concatenate(parts_ids) if parts_ids else np.zeros(0, np.int64)
    if len(ids) == 0:
        return []
    order = np.argsort(ids, kind="stable")
    ids, vectors = ids[order], np.concatenate(parts_vectors)[order]
    return [files.write(vectors, ids, kind_for(len(ids)))]


def _merge_into_trained(files: SegmentFiles, segments: list[dict[str, Any]], removed: np.ndarray,
                        staged: Staged | None) -> list[dict[str, Any]]:
    first = segments[0]
    index = files.read(first)
    faiss_factory.drop_id_map(index)  # rebuilt by `finish` once the lists are final
    for segment in segments[1:]:
        other = files.read(segment)
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
    return [files.save(index, first["type"], faiss_factory.ids_of(index), first.get("template"))]


def merge_small_tail(files: SegmentFiles, segments: list[dict[str, Any]], removed: Callable[[], np.ndarray],
                     kind_for: Callable[[int], str]) -> list[dict[str, Any]]:
    """Merge the newest segments with the ones before them while each of those is at most twice the size of what
    follows it (never the base). Sizes then fall geometrically, so a store holds O(log n) segments and each
    vector is rewritten O(log n) times: a write stays proportional to its change, amortised. `removed` is asked
    for the removed ids only when something is merged."""
    tail = 1
    while len(segments) - tail >= 2 and segments[-tail - 1]["vectors"] <= 2 * sum(
            s["vectors"] for s in segments[-tail:]):
        tail += 1
    if tail == 1:
        return segments
    return segments[:-tail] + merge(files, segments[-tail:], removed(), kind_for)
