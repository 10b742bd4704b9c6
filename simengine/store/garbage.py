"""Cleaning a store under its writer lock: what a writer that died left behind, and versions nobody can read any more.

Old versions stay readable for `grace_s` after they were replaced, for readers that opened them just before; then
their manifests go, and with them the segment files, attached directories and rows that no kept version uses.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from typing import Any

from simengine.errors import SimengineError
from simengine.files import TMP_SUFFIX
from simengine.store import rows
from simengine.store.layout import ATTACHED, ATTACHED_BY_DIGEST, MANIFESTS, SEGMENTS, StoreDir

log = logging.getLogger(__name__)


def roll_back_unfinished(store: StoreDir, conn: sqlite3.Connection, live: int) -> None:
    """Remove the rows and manifests of a writer that died before committing a version after `live` (its files go
    with `collect_garbage`)."""
    if touched := rows.roll_back_after(conn, live):
        log.warning("%s: rolled back %d rows of an unfinished write", store.root, touched)
    for v in store.manifest_versions():
        if v > live:
            store.manifest_path(v).unlink(missing_ok=True)


def collect_garbage(store: StoreDir, conn: sqlite3.Connection, grace_s: float) -> dict[str, int]:
    """Delete versions replaced more than `grace_s` ago, and the segment files, attached directories, rows and
    temporary files that no kept version uses. Safe only under the writer lock."""
    current = store.current_version()
    versions = [v for v in store.manifest_versions() if v <= current]
    manifests = {v: _read_or_none(store, v) for v in versions}
    now, kept, dropped = time.time(), [], 0
    replaced_at = now
    for v in reversed(versions):  # newest first: each version was replaced when the next one was committed
        manifest = manifests[v]
        if v == current or (manifest is not None and now - replaced_at < grace_s):
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
    used_attached = {m["model_dir"] for m in kept}
    for path in [store.root / ATTACHED, *(store.root / ATTACHED_BY_DIGEST).glob("[!.]*")]:
        if path.is_dir() and path.relative_to(store.root).as_posix() not in used_attached:
            shutil.rmtree(path)
    for folder in (store.root, store.root / MANIFESTS, store.root / ATTACHED_BY_DIGEST):
        for path in folder.glob(f".*{TMP_SUFFIX}"):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    purged = rows.purge_removed(conn, min(m["compacted_at"] for m in kept))
    return {"versions": dropped, "segments": segments, "rows": purged}


def _read_or_none(store: StoreDir, version: int) -> dict[str, Any] | None:
    try:
        return store.read_manifest(version)
    except SimengineError:
        return None
