"""The SQLite side: the queries that run on every refresh and write must use an index, never scan every row."""

import sqlite3

import pytest

from simengine.errors import IndexUnusableError
from simengine.index import items_db


def plan(conn: sqlite3.Connection, sql: str, args: list) -> str:
    return " ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args))


def test_per_write_and_per_refresh_queries_use_an_index(tmp_path):
    conn = items_db.connect(tmp_path, create=True)
    items_db.create(conn)
    rows = [{"path": f"/x/{i}.jpg", "label": "a", "split": None, "sha256": f"{i:064x}", "width": 1, "height": 1,
             "added_at": "t", "id": i} for i in range(2000)]
    items_db.insert(conn, rows, 1)
    queries = {
        "removed ids (every refresh)": (items_db.REMOVED_IDS, [3]),
        "roll back adds": ("DELETE FROM items WHERE added_version > ?", [3]),
        "roll back removals": ("UPDATE items SET removed_version = NULL WHERE removed_version > ?", [3]),
        "purge": ("DELETE FROM items WHERE removed_version <= ?", [3]),
    }
    for name, (sql, args) in queries.items():
        assert "USING" in plan(conn, sql, args) and "SCAN" not in plan(conn, sql, args), name
    items_db.mark_removed(conn, [5, 3, 1999], 2)
    conn.commit()
    assert items_db.removed_ids(conn, 2).tolist() == [3, 5, 1999] and items_db.removed_ids(conn, 1).tolist() == []
    assert len(items_db.live_ids(conn, 2)) == 1997 and len(items_db.live_ids(conn, 1)) == 2000


def test_a_missing_database_is_never_created(tmp_path):
    with pytest.raises(IndexUnusableError, match="missing"):
        items_db.connect(tmp_path)
    with pytest.raises(IndexUnusableError, match="missing"):
        items_db.connect(tmp_path, read_only=True)
    assert not (tmp_path / items_db.ITEMS_DB).exists()
