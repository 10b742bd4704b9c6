"""Keeping an index equal to its source: add new files, re-embed changed ones, remove those that are gone.

The index mirrors the source: an item whose path the source no longer names is removed. An item from outside a
folder source (`index add` of a file elsewhere) is no such item: it is kept and reported, unless pruned. A file
counts as changed
when its content hash, its label or its metadata differ from its row. The plan is made again under the writer
lock, from the version the commit builds on, so a sync never undoes a concurrent write; embedding happens before
the lock is taken (the feature cache makes re-embedding an unchanged picture cheap).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simengine.data.folders import Item
from simengine.data.sources import scan_source
from simengine.errors import SimengineError
from simengine.files import write_durably
from simengine.index.embedding import AddReport, embed_items, item_rows, unique_by_content
from simengine.index.items import metadata_of
from simengine.index.model_link import require_model
from simengine.model.bundle import Model, load_bundle
from simengine.store import rows as store_rows
from simengine.store.layout import StoreDir
from simengine.store.lock import DEFAULT_TIMEOUT_S
from simengine.store.writer import StoreWriter


# A sync that would remove every item, or more than this share of the index (and more than MASS_REMOVAL_MIN items),
# stops unless forced.
MASS_REMOVAL_SHARE = 0.5
MASS_REMOVAL_MIN = 10
# The record of the files the last sync could not index (unreadable, or copies of indexed images), with their content
# hash: the next sync lists only what is new, and its dry run does not promise to add them. A file beside the
# versions, not in them: what a sync could not do changes nothing in the collection, so it makes no version.
SKIPPED = "sync_skipped.json"


@dataclass
class SyncPlan:
    """What a sync does: items to add (new paths), to replace (changed: item and old id), rows to remove (gone),
    and how many stay."""

    new: list[Item] = field(default_factory=list)
    changed: list[tuple[Item, int]] = field(default_factory=list)
    gone: list[dict[str, Any]] = field(default_factory=list)
    unchanged: int = 0
    outside: list[dict[str, Any]] = field(default_factory=list)  # kept: not from the source folder


@dataclass
class SyncReport:
    """What a sync did (or, with `dry_run`, would do): paths and ids added, changed and removed."""

    source: str
    dry_run: bool
    added: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    unchanged: int = 0
    duplicates: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    version: int | None = None
    kept_outside: list[dict[str, Any]] = field(default_factory=list)  # items from outside the source folder
    as_before: list[str] = field(default_factory=list)  # failed or duplicate paths the last sync reported alike

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "dry_run": self.dry_run, "added": self.added, "changed": self.changed,
                "removed": self.removed, "unchanged": self.unchanged, "version": self.version,
                "kept_outside": self.kept_outside, "as_before": self.as_before,
                "duplicates": [{"path": p, "existing_id": i} for p, i in self.duplicates],
                "failed": [{"path": p, "reason": r} for p, r in self.failed]}


def plan_sync(items: list[Item], rows: list[dict[str, Any]], unreadable: set[str] = frozenset(),
              folder: Path | None = None) -> SyncPlan:
    """Compare a source's items with an index's live rows, by path; rows of files that exist but could not be read
    this time, and of every file under a folder that could not be listed (entries ending with a separator), stay as
    they are. With the source `folder` (resolved), rows of files outside it stay too, as `outside`."""
    by_path = {row["path"]: row for row in rows}
    folders = tuple(path for path in unreadable if path.endswith(os.sep))
    present = {path for path in by_path if path in unreadable or path.startswith(folders)} if unreadable else set()
    plan = SyncPlan(unchanged=len(present))
    for item in items:
        path = str(Path(item.path).absolute())
        present.add(path)
        row = by_path.get(path)
        if row is None:
            plan.new.append(item)
        elif (row["sha256"], row["label"], _set(metadata_of(row))) != (item.sha256, item.label,
                                                                              _set(item.metadata)):
            plan.changed.append((item, row["id"]))
        else:
            plan.unchanged += 1
    missing = [{"path": path, "id": row["id"]} for path, row in by_path.items() if path not in present]
    plan.outside = [row for row in missing if folder is not None and folder not in Path(row["path"]).parents]
    plan.gone = [row for row in missing if row not in plan.outside]
    return plan


def _set(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata as SQLite gives it back: names case-insensitive, no empty values (a row has every column any table
    brought, NULL where it had none)."""
    return {k.lower(): v for k, v in metadata.items() if v is not None}


def sync_index(index_dir: str | os.PathLike, source: str | os.PathLike | None = None, labels: str | None = None,
               path_column: str | None = None, dry_run: bool = False, model: Model | None = None,
               progress: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S, force: bool = False,
               prune: bool = False, label_column: str | None = None) -> SyncReport:
    """Make the index hold exactly the images `source` names (by default the source it was built from, read the
    same way: layout, labels, path and label columns), as one new version; nothing is written when nothing changed or on
    `dry_run`. Items from outside a folder source (added with `index add`) are kept and reported in
    `kept_outside`, or removed with `prune`. A changed file whose new content cannot be embedded is removed and
    reported as failed. Removing more than half of the index (an unmounted disk, a wrong path) needs `force`.
    Failures and duplicates that the last sync reported for the same content are in `as_before`; a dry run reports
    new copies of indexed images as duplicates and files that failed last time, unchanged, as failed."""
    index_dir = Path(index_dir)
    store = StoreDir(index_dir)
    manifest = store.read_manifest(store.current_version())
    built = manifest.get("build") or {}
    recorded = built.get("source") or built.get("data")  # "data": indexes built before sources existed
    if source is None and recorded is None:
        raise SimengineError(f"{index_dir}: no source recorded for this index; give SOURCE")
    source = Path(source if source is not None else recorded)
    same = recorded is not None and source.resolve() == Path(recorded).resolve()
    settings = built if same else {}
    collection = scan_source(source, labels or settings.get("labels") or "auto",
                             (settings.get("split") or "train").split(","),
                             path_column or settings.get("path_column") or "path", progress,
                             kind=settings.get("source_kind", "imagefolder" if same and "data" in built else None),
                             label_names=bool(built.get("label_names")),
                             label_column=label_column or settings.get("label_column"))
    report = SyncReport(source=str(source.resolve()), dry_run=dry_run, failed=list(collection.skipped))
    folder = None if prune or not source.is_dir() else source.resolve()
    with contextlib.closing(store_rows.connect(index_dir, read_only=True)) as conn:
        rows = store_rows.live_rows(conn, manifest["version"])
    plan = plan_sync(collection.items, rows, collection.unreadable, folder)
    _check_removals(plan, manifest["counts"]["items"], source, force)
    content = {str(item.path): item.sha256 for item in collection.items}
    if dry_run:
        leaving = {row["id"] for row in plan.gone} | {old for _, old in plan.changed}  # a renamed file is no copy
        previous = _read_skipped(index_dir)
        _foresee_skips(plan, {row["sha256"]: row["id"] for row in rows if row["id"] not in leaving}, previous,
                       content, report)
        _describe(report, plan, {})
        _compare_skips(report, previous, content, set())
        return report
    model = model or load_bundle(store.attached_dir(manifest))
    require_model(manifest, model, index_dir)
    seen = AddReport()
    vectors, embedded, failed = embed_items(model, unique_by_content(_to_embed(plan), seen), progress)
    report.failed.extend(failed)
    report.duplicates.extend(seen.duplicates)
    vector_of = {item.sha256: vectors[n] for n, item in enumerate(embedded)}
    attempted = {item.sha256 for item in _to_embed(plan)}
    with StoreWriter(index_dir, timeout_s) as writer:
        require_model(writer.base, model, index_dir)
        plan = plan_sync(collection.items, store_rows.live_rows(writer.conn, writer.base["version"]),
                         collection.unreadable, folder)
        _check_removals(plan, writer.base["counts"]["items"], source, force)
        replaced = [old for _, old in plan.changed]
        writer.remove(sorted(replaced + [row["id"] for row in plan.gone]))
        # Another writer may have changed the index since the first plan: what it now needs and was not embedded
        # waits for the next sync, and is said so.
        overtaken = {str(item.path) for item in _to_embed(plan) if item.sha256 not in attempted}
        report.failed.extend((path, f"{path}: the index changed while this sync ran; run it again")
                             for path in sorted(overtaken))
        ready = unique_by_content([item for item in _to_embed(plan) if item.sha256 in vector_of], AddReport())
        known = writer.live_ids_by("sha256", [item.sha256 for item in ready])
        report.duplicates.extend((str(item.path), known[item.sha256]) for item in ready if item.sha256 in known)
        fresh = [item for item in ready if item.sha256 not in known]
        ids = writer.add(np.stack([vector_of[item.sha256] for item in fresh]), item_rows(fresh)) if fresh else []
        _describe(report, plan, {str(item.path): i for item, i in zip(fresh, ids)})
        # A copy of another new file names the id that file got, as the next sync will.
        new_id = {item.sha256: i for item, i in zip(fresh, ids)}
        report.duplicates = [(path, new_id.get(content.get(path), -1) if existing < 0 else existing)
                             for path, existing in report.duplicates]
        previous = _read_skipped(index_dir)  # under the lock: another sync's record is not lost
        skipped = _compare_skips(report, previous, content, overtaken)
        if fresh or replaced or plan.gone:
            changes = f"+{len(report.added)} ~{len(replaced)} -{len(plan.gone)}"
            report.version = writer.commit(f"sync {changes}")["version"]
        if skipped != previous:  # after the commit: a sync that fails before it leaves the old record
            write_durably(index_dir / SKIPPED, json.dumps(skipped, indent=1).encode())
    return report


def _read_skipped(index_dir: Path) -> dict[str, dict[str, Any]]:
    """The last sync's record; none when there is none or it cannot be read (then everything is told again)."""
    try:
        record = json.loads((index_dir / SKIPPED).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _foresee_skips(plan: SyncPlan, live: dict[str, int], previous: dict[str, dict[str, Any]],
                   content: dict[str, str], report: SyncReport) -> None:
    """What a dry run can tell of its new files without embedding them: copies of indexed images (or of each other)
    are duplicates, and files that failed at the last sync with the content they still have fail again."""
    seen = AddReport()
    plan.new, unique = [], unique_by_content(plan.new, seen)
    for item in unique:
        path = str(item.path)
        before = previous.get(path) or {}
        if item.sha256 in live:
            report.duplicates.append((path, live[item.sha256]))
        elif "reason" in before and before.get("sha256") == content.get(path):
            report.failed.append((path, before["reason"]))
        else:
            plan.new.append(item)
    report.duplicates.extend(seen.duplicates)


def _compare_skips(report: SyncReport, previous: dict[str, dict[str, Any]], content: dict[str, str],
                   transient: set[str]) -> dict[str, dict[str, Any]]:
    """This sync's record of what it could not index (not the `transient` failures, which the next sync does);
    the paths the last one recorded alike go to `as_before`."""
    skipped = {path: {"sha256": content.get(path), "reason": reason} for path, reason in report.failed
               if path not in transient}
    skipped.update({path: {"sha256": content.get(path), "copy_of": existing} for path, existing in report.duplicates})
    report.as_before = [path for path, entry in skipped.items() if previous.get(path) == entry]
    return skipped


def _check_removals(plan: SyncPlan, live: int, source: Path, force: bool) -> None:
    gone = len(plan.gone)
    if not force and gone and (gone == live or gone > max(MASS_REMOVAL_MIN, live * MASS_REMOVAL_SHARE)):
        raise SimengineError(f"{source}: the sync would remove {gone} of {live} items (is the source missing or "
                             "unmounted?); check it, or pass --force")


def _to_embed(plan: SyncPlan) -> list[Item]:
    return plan.new + [item for item, _ in plan.changed]


def _describe(report: SyncReport, plan: SyncPlan, new_ids: dict[str, int]) -> None:
    report.added = [{"path": str(item.path), "id": new_ids.get(str(item.path))} for item in plan.new
                    if report.dry_run or str(item.path) in new_ids]
    report.changed = [{"path": str(item.path), "old_id": old, "new_id": new_ids.get(str(item.path))}
                      for item, old in plan.changed]
    report.removed, report.unchanged, report.kept_outside = plan.gone, plan.unchanged, plan.outside
