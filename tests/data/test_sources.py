"""Sources: folder trees, lists of paths, CSV and parquet tables, ImageFolder datasets; bad entries skipped."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from simengine.data.sources import scan_source
from simengine.errors import SimengineError


@pytest.fixture
def tree(fixture_data, tmp_path) -> Path:
    """photos/<nested folders>/*.jpg with a PNG, hidden files and folders, non-images, an EPS and a broken JPEG."""
    root = tmp_path / "photos"
    train = fixture_data / "train"
    (root / "2024" / "summer").mkdir(parents=True)
    (root / "2025").mkdir()
    (root / ".thumbnails").mkdir()
    shutil.copy(train / "coffee" / "coffee_00.jpg", root / "top.jpg")
    shutil.copy(train / "chelsea" / "chelsea_00.jpg", root / "2024" / "cat.JPG")
    shutil.copy(train / "rocket" / "rocket_00.jpg", root / "2024" / "summer" / "rocket.jpeg")
    from PIL import Image

    Image.open(train / "astronaut" / "astronaut_00.jpg").save(root / "2025" / "astronaut.png")
    shutil.copy(train / "coffee" / "coffee_01.jpg", root / ".thumbnails" / "hidden.jpg")
    shutil.copy(train / "coffee" / "coffee_02.jpg", root / "2025" / ".hidden.jpg")
    (root / "notes.txt").write_text("not an image")
    (root / "2025" / "vector.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n")
    (root / "2025" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def names(collection) -> list[str]:
    return sorted(item.path.name for item in collection.items)


def test_folder_is_searched_recursively_skipping_hidden_and_non_images(tree):
    collection = scan_source(tree)
    # The broken JPEG is listed: it is reported when embedding fails, like any damaged file.
    assert names(collection) == ["astronaut.png", "broken.jpg", "cat.JPG", "rocket.jpeg", "top.jpg"]
    assert collection.kind == "folder" and not collection.labelled
    assert all(item.path.is_absolute() and len(item.sha256) == 64 for item in collection.items)


def test_folder_labels_from_folder_names(tree):
    labels = {item.path.name: item.label for item in scan_source(tree, labels="folders").items}
    assert labels["rocket.jpeg"] == "summer" and labels["cat.JPG"] == "2024" and labels["top.jpg"] == "photos"


def test_imagefolder_layout_keeps_its_classes(fixture_data):
    collection = scan_source(fixture_data, splits=("train", "val"))
    assert collection.kind == "imagefolder" and collection.labelled
    assert {i.label for i in collection.items} == {"coffee", "chelsea", "astronaut", "rocket"}
    assert {i.split for i in collection.items} == {"train", "val"}
    assert not scan_source(fixture_data, labels="none").labelled


def test_list_of_paths_relative_to_the_list(tree, tmp_path):
    listing = tree / "list.txt"
    listing.write_text("# holiday pictures\n2024/cat.JPG\n\n" f"{tree / 'top.jpg'}\nmissing.jpg\n")
    collection = scan_source(listing)
    assert names(collection) == ["cat.JPG", "top.jpg"]
    [(where, reason)] = collection.skipped
    assert where == f"{listing}:5" and "missing.jpg" in reason


def test_csv_table_with_labels_and_typed_metadata(tree):
    table = tree / "photos.csv"
    table.write_text("path,label,photographer,year,rating,note\n"
                     "top.jpg,drink,ann,2021,4.5,\n"
                     "2024/cat.JPG,cat,bob,2019,3,\"a, quoted note\"\n"
                     ",cat,bob,2019,3,no path\n"
                     "gone.jpg,cat,bob,2019,3,\n")
    collection = scan_source(table)
    assert collection.kind == "csv" and collection.labelled
    by_name = {item.path.name: item for item in collection.items}
    assert by_name["top.jpg"].label == "drink"
    assert by_name["top.jpg"].metadata == {"photographer": "ann", "year": 2021, "rating": 4.5, "note": None}
    assert by_name["cat.JPG"].metadata["note"] == "a, quoted note"
    assert [where for where, _ in collection.skipped] == [f"{table}:4", f"{table}:5"]
    assert collection.metadata_columns == ["note", "photographer", "rating", "year"]
    assert not scan_source(table, labels="none").labelled


def test_parquet_table(tree):
    pa = pytest.importorskip("pyarrow")
    import datetime

    import pyarrow.parquet as pq

    pq.write_table(pa.table({
        "file": ["top.jpg", "2025/astronaut.png"],
        "label": ["drink", None],
        "taken": [datetime.date(2020, 1, 2), datetime.date(2021, 3, 4)],
        "width_cm": [10.5, 20.0],
        "tags": [["a", "b"], []],
    }), tree / "photos.parquet")
    collection = scan_source(tree / "photos.parquet", path_column="file")
    by_name = {item.path.name: item for item in collection.items}
    assert by_name["top.jpg"].label == "drink" and by_name["astronaut.png"].label is None
    assert by_name["top.jpg"].metadata == {"taken": "2020-01-02", "width_cm": 10.5, "tags": '["a", "b"]'}


@pytest.mark.parametrize("header, message", [
    ("file,label", "no 'path' column"),
    ("path,width", "kept by the index itself"),
    ("path,ID", "kept by the index itself"),
    ('path,"bad name"', "not a plain name"),
    ("path,Year,year", "two columns named"),
])
def test_bad_table_headers_are_one_line_errors(tree, header, message):
    table = tree / "bad.csv"
    table.write_text(header + "\ntop.jpg,1" + (",1" if header.count(",") == 2 else "") + "\n")
    with pytest.raises(SimengineError, match=message):
        scan_source(table)


def test_label_mode_table_needs_a_label_column_and_a_table(tree):
    (tree / "t.csv").write_text("path\ntop.jpg\n")
    with pytest.raises(SimengineError, match="needs a 'label' column"):
        scan_source(tree / "t.csv", labels="table")
    with pytest.raises(SimengineError, match="needs a CSV or parquet table"):
        scan_source(tree, labels="table")
    with pytest.raises(SimengineError, match="no such file or folder"):
        scan_source(tree / "nowhere")
