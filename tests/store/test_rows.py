"""The SQLite side: the queries that run on every refresh and write must use an index, never scan every row."""

import sqlite3

import pytest

from simengine.errors import IndexUnusableError
from simengine.store import rows as store_rows


def plan(conn: sqlite3.Connection, sql: str, args: list) -> str:
    return " ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args))


def test_per_write_and_per_refresh_queries_use_an_index(tmp_path):
    conn = store_rows.connect(tmp_path, create=True)
    store_rows.create(conn, {"path": str, "sha256": str}, not_null=("path",), indexed=("sha256", "path"))
    rows = [{"path": f"/x/{i}.jpg", "sha256": f"{i:064x}", "id": i} for i in range(2000)]
    store_rows.insert(conn, rows, 1)
    queries = {
        "removed ids (every refresh)": (store_rows.REMOVED_IDS, [3]),
        "roll back adds": ("DELETE FROM items WHERE added_version > ?", [3]),
        "roll back removals": ("UPDATE items SET removed_version = NULL WHERE removed_version > ?", [3]),
        "purge": ("DELETE FROM items WHERE removed_version <= ?", [3]),
    }
    for name, (sql, args) in queries.items():
        assert "USING" in plan(conn, sql, args) and "SCAN" not in plan(conn, sql, args), name
    store_rows.mark_removed(conn, [5, 3, 1999], 2)
    conn.commit()
    assert store_rows.removed_ids(conn, 2).tolist() == [3, 5, 1999] and store_rows.removed_ids(conn, 1).tolist() == []
    assert len(store_rows.live_ids(conn, 2)) == 1997 and len(store_rows.live_ids(conn, 1)) == 2000


def test_a_missing_database_is_never_created(tmp_path):
    with pytest.raises(IndexUnusableError, match="missing"):
        store_rows.connect(tmp_path)
    with pytest.raises(IndexUnusableError, match="missing"):
        store_rows.connect(tmp_path, read_only=True)
    assert not (tmp_path / store_rows.ITEMS_DB).exists()
