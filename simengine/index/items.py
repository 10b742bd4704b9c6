"""An index's rows: one image each (path, label, split, content hash, size, when added) plus the metadata columns
its source brought, stored in the store's versioned items table."""

from __future__ import annotations

import sqlite3
from typing import Any

from simengine.data.folders import ROW_COLUMNS
from simengine.errors import SimengineError
from simengine.store import rows

ITEM_COLUMNS = {"path": str, "label": str, "split": str, "sha256": str, "width": int, "height": int, "added_at": str}
NOT_NULL = ("path", "sha256", "added_at")
LOOKED_UP = ("sha256", "path")  # indexed: duplicates are found by content hash, removals by path
NOT_METADATA = frozenset(ROW_COLUMNS) | frozenset(rows.VERSION_STAMPS)
ID_PREFIX = "id:"  # how a question or a file names an indexed item: id:42


def create_table(conn: sqlite3.Connection) -> None:
    rows.create(conn, ITEM_COLUMNS, NOT_NULL, LOOKED_UP)


def metadata_of(row: dict[str, Any]) -> dict[str, Any]:
    """The columns of a row that its source table brought."""
    return {k: v for k, v in row.items() if k not in NOT_METADATA}


def metadata_columns(conn: sqlite3.Connection) -> list[str]:
    """Columns that source tables added to the items table."""
    return [n for n in rows.column_names(conn) if n not in NOT_METADATA]


def live_ids_by_sha(conn: sqlite3.Connection, version: int, shas: list[str]) -> dict[str, int]:
    return rows.live_ids_by(conn, version, "sha256", shas)


def labelled(conn: sqlite3.Connection, version: int) -> list[dict[str, Any]]:
    """(id, label, sha256) of the live labelled items, by id."""
    where, args = rows.live_condition(version)
    cur = conn.execute(f"SELECT id, label, sha256 FROM items WHERE label IS NOT NULL AND {where} ORDER BY id", args)
    return [dict(row) for row in cur]


def label_counts(conn: sqlite3.Connection, version: int) -> dict[str | None, int]:
    return rows.count_by(conn, version, "label")


def parse_id(ref: str) -> int:
    """The item id of an `id:N` reference; a clear error for anything that cannot be one."""
    digits = ref[len(ID_PREFIX):]
    if not (digits.isascii() and digits.isdigit()):
        raise SimengineError(f"{ref}: an id reference is id:<number>")
    if len(digits) > 19 or int(digits) > rows.MAX_ID:
        raise SimengineError(f"{ref}: no such item (ids are below 2**63)")
    return int(digits)
