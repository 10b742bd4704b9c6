"""Moving an index's duplicates aside once a person has chosen each group's keeper: the files move by the same plan
and safety rules as `simengine dedup --move-to` (`dedup.move`), and the moved items leave the index in one version.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from simengine.dedup.find import DuplicateGroup, DuplicateReport, Member
from simengine.dedup.move import apply_moves, plan_moves
from simengine.errors import SimengineError
from simengine.index.reader import Index
from simengine.index.update import remove_items
from simengine.store import rows as store_rows


@dataclass
class IndexMoves:
    moved: list[dict[str, Any]] = field(default_factory=list)  # id, from, to
    left: list[dict[str, Any]] = field(default_factory=list)  # path, reason
    removed_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def move_index_duplicates(index_dir: str | os.PathLike, report: DuplicateReport, keepers: Mapping[int, int],
                          target_dir: str | os.PathLike) -> IndexMoves:
    """Move the duplicates of the groups `keepers` names ({group position in `report`: the id of the member to
    keep}) into `target_dir`, which must lie outside the collection's folder (`collection_folder`); then remove the
    moved items from the index. A file that changed, whose keeper changed, or whose target exists stays, and is reported."""
    groups = []
    for position, keeper_id in keepers.items():
        if not 0 <= position < len(report.groups):
            raise SimengineError(f"no duplicate group {position}: the report has {len(report.groups)}")
        group = report.groups[position]
        members = [group.keeper] + [m.image for m in group.duplicates]
        chosen = next((m for m in members if m.item_id == keeper_id), None)
        if chosen is None:
            raise SimengineError(f"item {keeper_id} is not in duplicate group {position}")
        groups.append(DuplicateGroup(chosen, [Member(m, "near", 0.0, 0.0) for m in members if m is not chosen]))
    if not groups:
        return IndexMoves()
    folder = collection_folder(index_dir)
    chosen_report = dataclasses.replace(report, source=str(folder), groups=groups)
    planned = plan_moves(chosen_report, target_dir)
    done, left = apply_moves(planned, target_dir)
    ids = {str(m.image.path): m.image.item_id for g in groups for m in g.duplicates}
    moved = [{"id": ids[str(m.source)], "from": str(m.source), "to": str(m.target)} for m in done]
    removed = remove_items(index_dir, [m["id"] for m in moved]) if moved else []
    return IndexMoves(moved, [{"path": p, "reason": r} for p, r in left], list(removed))


def collection_folder(index_dir: str | os.PathLike) -> Path:
    """The folder of an index's collection: the folder it was built from, else the one that holds all its live
    items. A target inside it would be indexed again by the next sync, so moves refuse one there."""
    with Index(index_dir) as index:
        built = index.manifest.get("build") or {}
        recorded = built.get("source") or built.get("data")
        if recorded and Path(recorded).is_dir():
            return Path(recorded).resolve()
        paths = [row["path"] for row in store_rows.live_rows(index.conn, index.version)]
    if not paths:
        raise SimengineError(f"{index_dir}: the index has no items")
    return Path(os.path.commonpath([str(Path(p).parent) for p in paths]))
