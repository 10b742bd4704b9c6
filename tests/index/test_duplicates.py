"""Moving an index's reviewed duplicates aside: a person's keeper stays, the copies move by the dedup move plan and
leave the index in one version."""

import csv
from pathlib import Path

import pytest

from fixtures import copies_folder, lite0_same_picture, photo
from simengine.dedup.find import find_duplicates
from simengine.errors import SimengineError
from simengine.index.duplicates import collection_folder, move_index_duplicates
from simengine.index.reader import Index


@pytest.fixture
def reviewed(bundle_dir, tmp_path):
    from simengine.index.build import build_index

    folder = copies_folder(tmp_path / "photos")
    index, _, _ = build_index(folder, bundle_dir, tmp_path / "index", labels="none")
    report = find_duplicates(index, decision=lite0_same_picture())
    return folder, index, report


def position(report, name: str) -> int:
    return next(n for n, g in enumerate(report.groups) if Path(g.keeper.path).name == name)


def ids_of(report, n: int) -> dict[str, int]:
    g = report.groups[n]
    return {Path(m.path).name: m.item_id for m in [g.keeper, *(d.image for d in g.duplicates)]}


def test_the_chosen_keeper_stays_and_its_copies_move_and_leave_the_index(reviewed, tmp_path):
    folder, index, report = reviewed
    coffee = position(report, "coffee.jpg")
    ids = ids_of(report, coffee)
    assert set(ids) == {"coffee.jpg", "coffee-small.jpg", "coffee-marked.jpg"}
    before = Index(index)
    live_before = len(before)
    moves = move_index_duplicates(index, report, {coffee: ids["coffee-marked.jpg"]}, tmp_path / "dups")
    assert sorted(Path(m["from"]).name for m in moves.moved) == ["coffee-small.jpg", "coffee.jpg"]
    assert (folder / "sub" / "coffee-marked.jpg").is_file() and not (folder / "coffee.jpg").exists()
    assert (tmp_path / "dups" / "coffee.jpg").is_file()  # paths below the collection's folder are kept
    with open(tmp_path / "dups" / "moves.csv") as log:
        assert len(list(csv.DictReader(log))) == 2
    assert sorted(moves.removed_ids) == sorted([ids["coffee.jpg"], ids["coffee-small.jpg"]])
    after = Index(index)
    assert len(after) == live_before - 2 and after.version == before.version + 1
    assert (folder / "rocket-tilted.jpg").is_file()  # a group not chosen stays whole


def test_a_copy_changed_since_the_review_stays_in_the_folder_and_the_index(reviewed, tmp_path):
    folder, index, report = reviewed
    rocket = position(report, "rocket.jpg")
    ids = ids_of(report, rocket)
    photo("horse").save(folder / "rocket-tilted.jpg")  # another picture now
    moves = move_index_duplicates(index, report, {rocket: ids["rocket.jpg"]}, tmp_path / "dups")
    assert moves.moved == [] and moves.removed_ids == [] and "changed" in moves.left[0]["reason"]
    assert ids["rocket-tilted.jpg"] in [int(i) for i in Index(index).ids_where("1")]


def test_bad_choices_and_a_target_inside_the_collection_are_refused(reviewed, tmp_path):
    folder, index, report = reviewed
    coffee = position(report, "coffee.jpg")
    with pytest.raises(SimengineError, match="no duplicate group 99"):
        move_index_duplicates(index, report, {99: 0}, tmp_path / "dups")
    with pytest.raises(SimengineError, match="not in duplicate group"):
        move_index_duplicates(index, report, {coffee: 10_000}, tmp_path / "dups")
    with pytest.raises(SimengineError, match="inside the scanned folder"):
        move_index_duplicates(index, report, {coffee: ids_of(report, coffee)["coffee.jpg"]}, folder / "dups")
    assert len(list(folder.rglob("*.jpg"))) == 6
    assert collection_folder(index) == folder.resolve()  # the folder it was built from, not the groups' own
