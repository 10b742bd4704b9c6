"""`find_duplicates` end to end on real photos (scikit-image's), their generated copies, and a corrupt file."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from fixtures import lite0_same_picture, photo
from simengine.dedup.calibrate import same_picture_file, write_same_picture
from simengine.dedup.copies import TRANSFORMS
from simengine.dedup.find import find_duplicates
from simengine.dedup.move import plan_moves
from simengine.errors import NotCalibratedError, SimengineError
from simengine.index.reader import Index

DECISION = lite0_same_picture()
DISTINCT = ("astronaut", "camera", "coins", "clock", "horse", "hubble_deep_field", "brick", "gravel", "grass")


def save(img, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """Distinct photos; an exact copy; copies resized, watermarked, cropped and rotated; a corrupt JPEG."""
    root = tmp_path_factory.mktemp("collection")
    rng = np.random.default_rng(0)
    for name in DISTINCT:
        save(photo(name), root / f"{name}.jpg", quality=92)
    shutil.copyfile(root / "astronaut.jpg", save(photo("coffee"), root / "sub" / "astronaut-again.jpg"))
    coffee = photo("coffee")
    save(coffee, root / "coffee.jpg", quality=92)
    save(TRANSFORMS["resize"](coffee, rng), root / "sub" / "coffee-small.jpg", quality=92)
    save(TRANSFORMS["text"](coffee, rng), root / "coffee-marked.jpg", quality=60)  # same pixels, smaller file
    save(TRANSFORMS["crop"](photo("chelsea"), rng), root / "chelsea-crop.jpg", quality=92)
    save(photo("chelsea"), root / "chelsea.jpg", quality=92)
    save(TRANSFORMS["rotate"](photo("rocket"), rng), root / "rocket-tilted.jpg", quality=92)
    save(photo("rocket"), root / "rocket.jpg", quality=92)
    (root / "broken.jpg").write_bytes((root / "rocket.jpg").read_bytes()[:300])
    return root


def named_groups(report) -> dict[str, dict[str, str]]:
    return {Path(g.keeper.path).name: {Path(m.image.path).name: m.kind for m in g.duplicates} for g in report.groups}


def test_exact_and_near_copies_grouped_around_the_best_copy(collection, bundle_dir):
    report = find_duplicates(collection, model_dir=bundle_dir, decision=DECISION)
    assert named_groups(report) == {
        "astronaut.jpg": {"astronaut-again.jpg": "exact"},
        "coffee.jpg": {"coffee-small.jpg": "near", "coffee-marked.jpg": "near"},
        "chelsea.jpg": {"chelsea-crop.jpg": "near"},
        "rocket.jpg": {"rocket-tilted.jpg": "near"},
    }
    # different photos of one kind of thing (three textures) are never grouped; the corrupt file is reported
    assert [Path(p).name for p, _ in report.skipped] == ["broken.jpg"]
    assert report.images == len(list(collection.rglob("*.*")))  # found; the broken one is among the skipped
    as_json = report.to_dict()
    assert as_json["groups"] == 4 and as_json["duplicates"] == 5 and as_json["exact"] == 1


def test_against_another_set_reports_only_its_copies_there(collection, bundle_dir, tmp_path):
    batch = tmp_path / "batch"
    rng = np.random.default_rng(1)
    save(TRANSFORMS["jpeg"](photo("horse"), rng), batch / "horse-recompressed.jpg", quality=92)
    shutil.copyfile(collection / "clock.jpg", batch / "clock.jpg")
    save(photo("moon"), batch / "moon.jpg")  # new: in no group
    shutil.copyfile(batch / "moon.jpg", batch / "moon-again.jpg")  # a copy within the batch is not asked about
    report = find_duplicates(batch, against=collection, model_dir=bundle_dir, decision=DECISION)
    assert named_groups(report) == {"clock.jpg": {"clock.jpg": "exact"}, "horse.jpg": {"horse-recompressed.jpg": "near"}}
    assert all(g.keeper.origin == "against" for g in report.groups)


def test_against_an_index_names_its_items(index_copy, fixture_data, bundle_dir, tmp_path):
    indexed = sorted((fixture_data / "train" / "rocket").glob("*.jpg"))[0]
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copyfile(indexed, batch / "same-bytes.jpg")
    report = find_duplicates(batch, against=index_copy, decision=DECISION)
    [group] = report.groups
    assert group.keeper.path == str(indexed.absolute()) and group.keeper.item_id is not None
    with Index(index_copy) as index:
        assert report.model == str(index.model_dir)  # the index's own model, when none is given


def test_a_model_without_the_decision_says_how_to_get_one(collection, bundle_dir, tmp_path):
    bare = Path(shutil.copytree(bundle_dir, tmp_path / "old-bundle"))
    (bare / "same_picture.json").unlink()
    with pytest.raises(NotCalibratedError, match="simengine dedup-calibrate --model"):
        find_duplicates(collection, model_dir=bare)
    write_same_picture(bare, same_picture_file(DECISION, {}, "test"))
    assert len(find_duplicates(collection, model_dir=bare).groups) == 4


def test_a_file_met_twice_is_never_its_own_duplicate(collection, bundle_dir, tmp_path):
    """A link to a file, a path listed twice, or an --against set that holds the source: the same file is read
    once and never reported (or moved) as a copy of itself."""
    listed = tmp_path / "list.txt"
    listed.write_text(f"{collection / 'clock.jpg'}\n{collection / 'clock.jpg'}\n{collection / 'moon-link.jpg'}\n")
    (collection / "moon-link.jpg").symlink_to(collection / "clock.jpg")
    try:
        report = find_duplicates(listed, model_dir=bundle_dir, decision=DECISION)
        assert report.groups == [] and len(report.skipped) == 2
        assert all("the same file again" in reason for _, reason in report.skipped)
        overlapping = find_duplicates(collection / "sub", against=collection, model_dir=bundle_dir, decision=DECISION)
        assert overlapping.groups == []
    finally:
        (collection / "moon-link.jpg").unlink()


def test_a_link_is_never_kept_over_a_real_copy(bundle_dir, tmp_path, caplog):
    """A link to a picture outside the folder would rank first as the older file; then the only real copy inside
    would be the duplicate that `--move-to` takes out of the folder. The link's file stays where it is too."""
    folder, outside = tmp_path / "photos", tmp_path / "elsewhere"
    older = save(photo("coffee"), outside / "coffee.jpg", quality=92)
    folder.mkdir()
    shutil.copyfile(older, folder / "coffee.jpg")
    (folder / "coffee-link.jpg").symlink_to(older)
    save(photo("rocket"), folder / "rocket.jpg", quality=92)
    report = find_duplicates(folder, model_dir=bundle_dir, decision=DECISION)
    [group] = report.groups
    assert group.keeper.path == str(folder / "coffee.jpg")
    assert [m.image.path for m in group.duplicates] == [str(older)]  # the link's file: paths are resolved
    assert plan_moves(report, tmp_path / "dups") == [] and "outside" in caplog.text


def test_keep_original_prefers_the_camera_format_over_a_derived_copy(bundle_dir, tmp_path):
    folder = tmp_path / "photos"
    jpeg = save(photo("coffee"), folder / "coffee.jpg", quality=90)
    save(photo("coffee"), folder / "coffee-export.png")  # the same pixels, a larger file
    save(photo("rocket"), folder / "rocket.jpg", quality=90)
    by_size = find_duplicates(folder, model_dir=bundle_dir, decision=DECISION)
    assert [Path(g.keeper.path).name for g in by_size.groups] == ["coffee-export.png"]
    by_format = find_duplicates(folder, model_dir=bundle_dir, decision=DECISION, keep="original")
    assert [g.keeper.path for g in by_format.groups] == [str(jpeg)]
    with pytest.raises(SimengineError, match="--keep must be one of"):
        find_duplicates(folder, model_dir=bundle_dir, keep="best")


def test_the_duplicates_among_an_indexs_items_without_scanning_a_folder(collection, bundle_dir, tmp_path):
    from simengine.dedup.job import dedup_collection
    from simengine.index.build import build_index

    index, _, _ = build_index(collection, bundle_dir, tmp_path / "index", labels="none")
    by_folder = named_groups(find_duplicates(collection, model_dir=bundle_dir, decision=DECISION))
    report = find_duplicates(index, decision=DECISION)  # the index's own model by default
    # An index holds each content once (a build skips exact copies): the near copies remain, grouped alike.
    near = {keeper: {m: kind for m, kind in members.items() if kind != "exact"} for keeper, members in by_folder.items()}
    assert named_groups(report) == {keeper: members for keeper, members in near.items() if members}
    assert all(m.image.item_id is not None for g in report.groups for m in g.duplicates)
    with pytest.raises(SimengineError, match="index remove"):
        dedup_collection(index, move_to=tmp_path / "dups")


def test_copies_says_which_copies_count_strictest_first(collection, bundle_dir, tmp_path):
    """exact: the same bytes only (nothing embedded); resized: also the copies whose layout is the original's (the
    resized and marked coffee, the slightly tilted rocket), not the crop; edited (the default): also the crop."""
    found = {copies: named_groups(find_duplicates(collection, model_dir=bundle_dir, decision=DECISION, copies=copies))
             for copies in ("exact", "resized", "edited")}
    assert found["exact"] == {"astronaut.jpg": {"astronaut-again.jpg": "exact"}}
    assert found["resized"] == {"astronaut.jpg": {"astronaut-again.jpg": "exact"},
                                "coffee.jpg": {"coffee-small.jpg": "near", "coffee-marked.jpg": "near"},
                                "rocket.jpg": {"rocket-tilted.jpg": "near"}}
    assert found["edited"] == dict(found["resized"], **{"chelsea.jpg": {"chelsea-crop.jpg": "near"}})
    report = find_duplicates(collection, model_dir=bundle_dir, decision=DECISION, copies="exact")
    assert report.to_dict()["decision"] is None and report.to_dict()["copies"] == "exact"
    with pytest.raises(SimengineError, match="--copies must be one of exact, resized, edited"):
        find_duplicates(collection, model_dir=bundle_dir, decision=DECISION, copies="similar")
