"""The gallery's paging: typed filters whose values are always bound, any column as the sort, only live rows."""

import pytest

from simengine.errors import SimengineError
from simengine.store import browse
from simengine.store import rows as store_rows


@pytest.fixture
def conn(tmp_path):
    conn = store_rows.connect(tmp_path, create=True)
    store_rows.create(conn, {"path": str, "label": str}, not_null=("path",))
    labels = ["cat", "dog", None]
    store_rows.insert(conn, [{"id": i, "path": f"/photos/{i:03d}.jpg", "label": labels[i % 3], "width": 100 + i,
                              "camera": "x100" if i % 2 else "Pixel 8"} for i in range(30)], 1)
    store_rows.mark_removed(conn, [0, 3], 2)  # two cats gone at version 2
    conn.commit()
    return conn


def F(column, op, value=None):
    return browse.Filter(column, op, value)


def test_filters_select_live_rows_and_count_them(conn):
    cats = browse.page(conn, 2, [F("label", "eq", "cat")])
    assert cats.total == 8 and all(r["label"] == "cat" for r in cats.rows) and {0, 3}.isdisjoint(r["id"] for r in cats.rows)
    assert browse.page(conn, 1, [F("label", "eq", "cat")]).total == 10  # version 1 still sees them
    assert browse.page(conn, 2, [F("label", "missing")]).total == 10
    assert browse.page(conn, 2, [F("label", "eq", None)]).total == 10
    assert browse.page(conn, 2, [F("label", "ne", "cat"), F("label", "present")]).total == 10
    wide = browse.page(conn, 2, [F("width", "min", 120), F("width", "max", 125)])
    assert [r["id"] for r in wide.rows] == [20, 21, 22, 23, 24, 25]
    assert browse.page(conn, 2, [F("CAMERA", "contains", "pixel")]).total == 14  # names and text case-insensitive
    assert [r["id"] for r in browse.page(conn, 2, [F("id", "in", [3, 4, 5, 99])]).rows] == [4, 5]
    assert browse.page(conn, 2, [F("id", "in", [])]).total == 0


def test_pages_follow_the_sort_with_ties_and_missing_values_by_id(conn):
    first = browse.page(conn, 2, sort="label", offset=0, limit=5)
    assert first.total == 28 and [r["id"] for r in first.rows] == [6, 9, 12, 15, 18]  # cats, by id
    last = browse.page(conn, 2, sort="label", offset=25, limit=5)
    assert [r["label"] for r in last.rows] == [None] * 3 and len(last.rows) == 3
    down = browse.page(conn, 2, sort="width", descending=True, limit=3)
    assert [r["id"] for r in down.rows] == [29, 28, 27]
    assert [r["id"] for r in browse.page(conn, 2, descending=True, limit=2).rows] == [29, 28]


def test_values_are_bound_and_names_checked(conn):
    assert browse.page(conn, 2, [F("label", "eq", "cat' OR '1'='1")]).total == 0
    assert browse.page(conn, 2, [F("path", "contains", "%")]).total == 0  # no LIKE pattern either
    for bad, message in [(F("label; DROP TABLE items", "eq", "x"), "no column"),
                         (F("added_version", "eq", 1), "no column"),  # the store's own stamps stay hidden
                         (F("label", "LIKE", "x"), "no operator"),
                         (F("label", "in", "cat"), "list"),
                         (F("label", "eq", {"a": 1}), "text or numbers"),
                         (F("label", "eq", "x" * 300), "at most"),
                         (F("width", "min", 2**70), "64-bit")]:
        with pytest.raises(SimengineError, match=message):
            browse.page(conn, 2, [bad])
    with pytest.raises(SimengineError, match="no column"):
        browse.page(conn, 2, sort="removed_version")
    with pytest.raises(SimengineError, match="limit"):
        browse.page(conn, 2, limit=browse.MAX_PAGE + 1)
    with pytest.raises(SimengineError, match="a filter is"):
        browse.Filter.from_dict({"column": "label", "op": "eq", "sql": "1=1"})
    assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 30


def test_column_summaries_give_kinds_bounds_and_few_values(conn):
    summary = {c["name"]: c for c in browse.column_summary(conn, 2)}
    assert summary["width"] == {"name": "width", "kind": "number", "missing": 0, "min": 101, "max": 129}
    assert summary["label"]["values"] == [["dog", 10], ["cat", 8]] and summary["label"]["missing"] == 10
    assert "values" not in summary["path"]  # every path is its own: a text box, not a list
    assert summary["camera"]["kind"] == "text"


def test_value_codes_name_the_commonest_values_then_other(conn):
    store_rows.insert(conn, [{"id": 100 + i, "path": f"/more/{i}", "label": f"rare{i}"} for i in range(12)], 3)
    codes = browse.value_codes(conn, 3, "label")
    assert codes["names"][:2] == ["dog", "cat"] and codes["names"][-1] == "other" and len(codes["names"]) == 12
    by_id = dict(zip(codes["ids"], codes["codes"]))
    assert by_id[1] == 0 and by_id[6] == 1 and by_id[2] == -1 and 0 not in by_id
    assert sorted(by_id[100 + i] for i in range(12)).count(11) == 3  # 9 rare labels named, 3 are "other"
