"""`where` filters: SQL over the items' columns with bound values, applied before the search; nothing else allowed."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from simengine.data.sources import scan_source
from simengine.errors import SimengineError
from simengine.index.build import build_index
from simengine.index.reader import Index
from simengine.index.update import remove_items
from simengine.store import faiss_factory, rows


@pytest.fixture(scope="module")
def table_index(fixture_data, model, tmp_path_factory):
    """An index of the fixture's train images from a CSV table with a label and two metadata columns."""
    root = tmp_path_factory.mktemp("table")
    lines = ["path,label,shot,owner"]
    for n, path in enumerate(sorted((fixture_data / "train").glob("*/*.jpg"))):
        lines.append(f"{path},{path.parent.name},{n},{'ann' if n % 2 else 'bob'}")
    (root / "photos.csv").write_text("\n".join(lines) + "\n")
    path, report, _ = build_index(scan_source(root / "photos.csv").items, model, root / "index")
    assert len(report.added) == 32
    return path


@pytest.fixture
def index(table_index):
    with Index(table_index) as idx:
        yield idx


def test_metadata_columns_are_stored_and_listed(index):
    assert index.info()["metadata_columns"] == ["owner", "shot"]
    row = index.item(0)
    assert row["owner"] in ("ann", "bob") and isinstance(row["shot"], int)


def test_where_with_bound_parameters(index):
    ids = index.ids_where("label = :l AND shot >= :s", {"l": "rocket", "s": 28})
    rows = index.items(ids)
    assert len(ids) == 4 and all(r["label"] == "rocket" and r["shot"] >= 28 for r in rows.values())


def test_a_hostile_value_stays_a_value(index):
    assert len(index.ids_where("label = :l", {"l": "x' OR '1'='1"})) == 0
    assert len(index.ids_where("owner = :o", {"o": "ann; DROP TABLE items"})) == 0
    assert len(index) == 32


@pytest.mark.parametrize("where", [
    "1; DROP TABLE items",
    "(SELECT count(*) FROM meta) > 0",
    "id IN (SELECT id FROM sqlite_master)",
    "load_extension('x') IS NULL",
    "length(randomblob(1000000000)) > 0",
    "length(printf('%.*c', 900000000, 'x')) > 0",
    "(SELECT count(*) FROM items) > 0",
    "1) UNION SELECT 'x' WHERE (1",
    "1) UNION SELECT -5 WHERE (1",
    "no_such_column = 1",
    "label = 'unterminated",
])
def test_anything_but_reading_items_is_refused_in_one_line(index, where):
    with pytest.raises(SimengineError) as err:
        index.ids_where(where)
    assert "\n" not in str(err.value)
    assert index.ids_where("1 = 1").size == 32  # the connection still works afterwards


def test_a_runaway_condition_is_stopped(index):
    view = rows.live_view(index.version)  # the live rows, which a condition may read
    cross_join = f"(SELECT count(*) FROM {view} a, {view} b, {view} c, {view} d, {view} e, {view} f) > 0"  # 32^6 rows
    with pytest.raises(SimengineError, match="took longer than 0.2 s"):
        rows.ids_where(index.conn, index.version, cross_join, timeout_s=0.2)
    recursive = "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c) > 0"
    with pytest.raises(SimengineError, match="not authorized"):
        index.ids_where(recursive)


def test_one_expensive_function_call_cannot_outrun_the_limit(index):
    """The time limit is checked between SQLite's steps, not inside one LIKE: its inputs are bounded instead."""
    import time

    grown = "'aaaaa'"
    for _ in range(5):  # 500,000 characters, which one LIKE against a long pattern took a minute to scan
        grown = f"replace({grown}, 'a', 'aaaaaaaaaa')"
    started = time.monotonic()
    for where, params in ((f"id BETWEEN 3 AND 6 AND ({grown} || label) LIKE :p", {"p": "%a" * 5000 + "b"}),
                          ("label LIKE :p", {"p": "%" * 300})):
        with pytest.raises(SimengineError, match="too big|too complex|took longer"):
            rows.ids_where(index.conn, index.version, where, params, timeout_s=1)
    assert time.monotonic() - started < 20
    assert index.ids_where("label LIKE :p", {"p": "%rock%"}).size == 8  # ordinary patterns still work


def test_removed_items_never_come_back_through_the_condition(table_index, tmp_path):
    import shutil

    copy = shutil.copytree(table_index, tmp_path / "copy")
    remove_items(copy, [0, 1])
    with Index(copy) as idx:
        assert set(idx.ids_where("1 = 1")) == set(range(2, 32))
        assert set(idx.ids_where("1) OR (1 = 1")) == set(range(2, 32))
        # Conditions that try to reach the removed rows around the live-rows view.
        cte = "EXISTS (WITH {name} AS (SELECT id, owner FROM items) SELECT 1 FROM {name} WHERE id = 0)"
        for where in ("1) UNION SELECT id FROM items WHERE (1", "owner = (SELECT owner FROM items WHERE id = 0)",
                      # a CTE named like the view: the reads in its body carry its name as their source
                      cte.format(name="live_items_at_x"), cte.format(name=f"{rows.LIVE_VIEW}_{idx.version}")):
            with pytest.raises(SimengineError, match="not authorized|prohibited"):
                idx.ids_where(where)


def test_filtered_search_returns_only_selected_items_and_k_of_them(index):
    query = index.vectors([5])
    sims, ids = index.search(query, 3, "owner = :o", {"o": "ann"})
    rows = index.items(ids[0])
    assert len(rows) == 3 and all(r["owner"] == "ann" for r in rows.values())
    assert np.all(np.diff(sims[0]) <= 1e-6)
    # The exact answer among the selected items, computed here by hand.
    selected = index.ids_where("owner = 'ann'")
    best = selected[np.argsort(-(index.vectors(selected) @ query[0]))[:3]]
    assert ids[0].tolist() == best.tolist()
    _, none = index.search(query, 3, "owner = 'nobody'")
    assert none.shape == (1, 0)


def test_wide_hnsw_filters_keep_recall():
    """Above the exact-search size, HNSW looks further in proportion to what the filter lets through."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    hnsw = faiss_factory.build(vectors, np.arange(3000), "hnsw")
    allowed = np.sort(rng.choice(3000, 30, replace=False))
    queries = vectors[:20] + 0.1 * rng.standard_normal((20, 16)).astype(np.float32)
    truth = allowed[np.argsort(-(queries @ vectors[allowed].T), axis=1)[:, :5]]
    _, found = faiss_factory.search(hnsw, queries, 5, faiss_factory.only(allowed), len(allowed) / 3000)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(found, truth)])
    assert recall >= 0.95


def test_filter_leaves_the_database_untouched(table_index):
    before = sqlite3.connect(table_index / rows.ITEMS_DB).execute("SELECT count(*) FROM items").fetchone()
    with Index(table_index) as idx, pytest.raises(SimengineError):
        idx.ids_where("1); DELETE FROM items; SELECT (1")
    after = sqlite3.connect(table_index / rows.ITEMS_DB).execute("SELECT count(*) FROM items").fetchone()
    assert before == after
