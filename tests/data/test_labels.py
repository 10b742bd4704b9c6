"""Labels are what people call them: a class folder named by a known code is indexed under its name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from simengine.data.sources import scan_source


@pytest.fixture
def coded(fixture_data, tmp_path) -> Path:
    """An ImageFolder dataset whose class folders are Imagenette's WordNet ids, and one that is a plain name."""
    root = tmp_path / "coded"
    for code, photos in (("n01440764", "coffee"), ("n03888257", "rocket"), ("cats", "chelsea")):
        shutil.copytree(fixture_data / "train" / photos, root / "train" / code)
    return root


def test_a_known_code_becomes_its_name_and_the_code_a_column(coded):
    items = scan_source(coded).items
    assert {i.label for i in items} == {"tench", "parachute", "cats"}
    assert {i.metadata.get("wnid") for i in items if i.label == "tench"} == {"n01440764"}
    assert all(i.metadata == {} for i in items if i.label == "cats")  # a plain name is its own label


def test_folder_labels_of_a_plain_tree_are_named_too(coded):
    items = scan_source(coded / "train", labels="folders").items
    assert {i.label for i in items} == {"tench", "parachute", "cats"}


def test_a_table_label_is_the_users_own_value(coded, tmp_path):
    photo = next((coded / "train" / "n01440764").iterdir())
    table = tmp_path / "t.csv"
    table.write_text(f"path,label\n{photo},n01440764\n")
    [item] = scan_source(table).items
    assert item.label == "n01440764" and item.metadata == {}
