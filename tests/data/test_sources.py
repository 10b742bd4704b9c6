"""Sources: folder trees, lists of paths, CSV and parquet tables, ImageFolder datasets; bad entries skipped."""

from __future__ import annotations

import os
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


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_named_like_an_image_is_reported_and_skipped_without_hanging(tree):
    """A FIFO is never opened to wait for a writer: every scan of the folder (build, sync, dedup, embed) would hang."""
    import subprocess
    import sys

    os.mkfifo(tree / "2025" / "pipe.jpg")
    (tree / "2025" / "link.jpg").symlink_to(tree / "2025" / "pipe.jpg")
    code = ("import sys; from simengine.data.sources import scan_source; c = scan_source(sys.argv[1]); "
            "print(len(c.items)); print(*sorted(reason for _, reason in c.skipped), sep='\\n')")
    result = subprocess.run([sys.executable, "-c", code, str(tree)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    count, *reasons = result.stdout.splitlines()
    assert count == "5" and len(reasons) == 2 and all(r.endswith("not a regular file") for r in reasons)


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


def test_cells_that_only_look_numeric_stay_text(tree):
    from simengine.data.sources import typed_value

    assert [typed_value(t) for t in ("007", "02139", "12345678901234567890123", "+5", "1.50", "-3", "2e3", "", "x")] == \
        ["007", "02139", "12345678901234567890123", "+5", 1.5, -3, 2000.0, None, "x"]
    table = tree / "codes.csv"
    table.write_text("path,label,Zip\ntop.jpg,007,02139\n2024/cat.JPG,7,10001\n")
    items = {i.path.name: i for i in scan_source(table).items}
    assert items["top.jpg"].label == "007" and items["cat.JPG"].label == "7"  # labels are never typed
    assert items["top.jpg"].metadata == {"zip": "02139"} and items["cat.JPG"].metadata == {"zip": 10001}


def test_a_path_listed_twice_is_skipped_with_the_first_line(tree):
    table = tree / "twice.csv"
    table.write_text("path,rating\ntop.jpg,1\n./top.jpg,2\n")
    collection = scan_source(table)
    assert [i.metadata["rating"] for i in collection.items] == [1]
    assert "already listed on line 2" in collection.skipped[0][1]


def test_bad_entries_are_skipped_not_fatal(tree):
    import os

    os.symlink(tree / "loop_b.jpg", tree / "loop_a.jpg")
    os.symlink(tree / "loop_a.jpg", tree / "loop_b.jpg")
    (tree / os.fsdecode(b"caf\xe9.jpg")).write_bytes((tree / "top.jpg").read_bytes())
    collection = scan_source(tree)
    assert "top.jpg" in names(collection)
    reasons = " ".join(reason for _, reason in collection.skipped)
    assert "loop_a.jpg" in reasons and "not valid UTF-8" in reasons
    with pytest.raises(SimengineError, match="not a text file of paths"):
        scan_source(tree / "top.jpg")


def test_an_index_inside_the_folder_is_not_indexed(tree):
    (tree / "indexes" / "default" / "model").mkdir(parents=True)
    (tree / "indexes" / "default" / "CURRENT").write_text("v1.json")
    shutil.copy(tree / "top.jpg", tree / "indexes" / "default" / "model" / "loss_curve.png")
    collection = scan_source(tree)
    # The tree's own five images are all still found (an empty scan fails here), the index's file is not.
    assert names(collection) == ["astronaut.png", "broken.jpg", "cat.JPG", "rocket.jpeg", "top.jpg"]
    assert len(collection.items) == 5 and "loss_curve.png" not in names(collection)


def test_only_still_image_suffixes_are_walked(tree):
    (tree / "clip.mpg").write_bytes(b"\x00\x00\x01\xba")
    (tree / "data.h5").write_bytes(b"\x89HDF")
    found = names(scan_source(tree))
    assert {n for n in found if not n.endswith(("jpg", "JPG", "jpeg", "png"))} == set()
    # And the still images are walked: exactly the tree's five (an empty scan fails here).
    assert found == ["astronaut.png", "broken.jpg", "cat.JPG", "rocket.jpeg", "top.jpg"]


def test_a_recorded_layout_wins_over_what_the_folder_looks_like_now(tree):
    (tree / "train" / "trip").mkdir(parents=True)
    shutil.copy(tree / "top.jpg", tree / "train" / "trip" / "x.jpg")
    assert scan_source(tree).kind == "imagefolder"
    assert len(scan_source(tree, kind="folder").items) == 6


def test_parquet_values_come_back_as_sqlite_keeps_them(tree):
    pa = pytest.importorskip("pyarrow")
    import decimal

    import pyarrow.parquet as pq

    pq.write_table(pa.table({
        "path": ["top.jpg"], "score": [float("nan")], "price": pa.array([decimal.Decimal("1.50")], pa.decimal128(5, 2)),
        "big": pa.array([2**64 - 1], pa.uint64()),
    }), tree / "values.parquet")
    [item] = scan_source(tree / "values.parquet").items
    assert item.metadata == {"score": None, "price": 1.5, "big": str(2**64 - 1)}


def test_labels_from_a_named_column_of_a_table(fixture_data, tmp_path):
    """A noisy-label CSV indexed as it is: the chosen column gives the labels, the other columns stay metadata."""
    photos = sorted((fixture_data / "train" / "coffee").glob("*.jpg"))[:3]
    table = tmp_path / "noisy.csv"
    table.write_text("path,noisy_labels_0,noisy_labels_5\n" + "".join(
        f"{p},coffee,{'rocket' if n == 1 else 'coffee'}\n" for n, p in enumerate(photos)))
    items = scan_source(table, label_column="noisy_labels_5").items
    assert [i.label for i in items] == ["coffee", "rocket", "coffee"]
    assert [i.metadata for i in items] == [{"noisy_labels_0": "coffee"}] * 3
    with pytest.raises(SimengineError, match="no 'noisy_labels_9' column to take labels from"):
        scan_source(table, label_column="noisy_labels_9")
    with pytest.raises(SimengineError, match="--label-column names a column of a CSV or parquet table"):
        scan_source(fixture_data / "train", label_column="noisy_labels_5")
