"""`sync_index`: new files added, changed ones re-embedded, gone ones removed; idempotent; dry runs write nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from simengine.errors import SimengineError
from simengine.index.build import build_index
from simengine.index.reader import Index
from simengine.index.sync import sync_index
from simengine.store.layout import StoreDir


@pytest.fixture
def folder_index(fixture_data, bundle_dir, tmp_path):
    """An unlabelled folder of 6 photos (nested) and its index, built the way `index build FOLDER` builds it."""
    folder = tmp_path / "photos"
    for n, name in enumerate(("coffee", "chelsea", "astronaut")):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            shutil.copy(fixture_data / "train" / name / f"{name}_{i:02d}.jpg", folder / name / f"{n}{i}.jpg")
    index, report, _ = build_index(folder, bundle_dir, tmp_path / "index", labels="none")
    assert len(report.added) == 6
    return folder, index


def paths(index_dir) -> dict[str, int]:
    with Index(index_dir) as idx:
        return {row["path"]: row["id"] for row in idx.items(range(idx.manifest["next_id"])).values()}


def test_sync_adds_changes_and_removes(folder_index, fixture_data):
    folder, index = folder_index
    before = paths(index)
    shutil.copy(fixture_data / "train" / "rocket" / "rocket_00.jpg", folder / "new.jpg")
    (folder / "coffee" / "00.jpg").unlink()
    shutil.copy(fixture_data / "train" / "rocket" / "rocket_01.jpg", folder / "chelsea" / "10.jpg")  # new content
    report = sync_index(index)
    assert [a["path"] for a in report.added] == [str(folder / "new.jpg")]
    assert [(c["path"], c["old_id"]) for c in report.changed] == [(str(folder / "chelsea" / "10.jpg"),
                                                                   before[str(folder / "chelsea" / "10.jpg")])]
    assert report.removed == [{"path": str(folder / "coffee" / "00.jpg"), "id": before[str(folder / "coffee" / "00.jpg")]}]
    assert report.unchanged == 4 and report.version == 2
    after = paths(index)
    assert set(after) == {str(p) for p in folder.rglob("*.jpg")}
    assert after[str(folder / "chelsea" / "10.jpg")] not in before.values()  # re-embedded under a new id
    # Nothing changed since: no new version.
    again = sync_index(index)
    assert (again.added, again.changed, again.removed, again.version) == ([], [], [], None)
    assert StoreDir(index).current_version() == 2


def test_dry_run_writes_nothing(folder_index, fixture_data):
    folder, index = folder_index
    shutil.copy(fixture_data / "train" / "rocket" / "rocket_00.jpg", folder / "new.jpg")
    report = sync_index(index, dry_run=True)
    assert [a["path"] for a in report.added] == [str(folder / "new.jpg")] and report.added[0]["id"] is None
    assert StoreDir(index).current_version() == 1


def test_changed_labels_and_metadata_count_as_changes(fixture_data, model, tmp_path):
    table = tmp_path / "t.csv"
    photos = sorted((fixture_data / "train" / "coffee").glob("*.jpg"))[:3]
    table.write_text("path,label,rating\n" + "".join(f"{p},coffee,{n}\n" for n, p in enumerate(photos)))
    index, _, _ = build_index(table, model, tmp_path / "index")
    table.write_text("path,label,rating\n" + "".join(f"{p},coffee,{5 if n == 0 else n}\n" for n, p in enumerate(photos)))
    report = sync_index(index, model=model)
    assert [c["path"] for c in report.changed] == [str(photos[0])] and report.unchanged == 2
    with Index(index) as idx:
        [new_id] = [c["new_id"] for c in report.changed]
        assert idx.item(new_id)["rating"] == 5


def test_a_moved_file_is_removed_and_added_again(folder_index):
    folder, index = folder_index
    (folder / "coffee" / "00.jpg").rename(folder / "moved.jpg")
    report = sync_index(index)
    assert [a["path"] for a in report.added] == [str(folder / "moved.jpg")] and len(report.removed) == 1
    assert str(folder / "moved.jpg") in paths(index)


def test_a_missing_source_does_not_empty_the_index(folder_index, tmp_path):
    folder, index = folder_index
    shutil.rmtree(folder)
    folder.mkdir()  # an unmounted mount point looks like this
    with pytest.raises(SimengineError, match="would remove 6 of 6 items"):
        sync_index(index)
    assert StoreDir(index).current_version() == 1
    assert len(sync_index(index, force=True).removed) == 6


def test_a_file_that_cannot_be_read_now_keeps_its_item(folder_index, monkeypatch):
    import simengine.data.folders as folders

    folder, index = folder_index
    unreadable = folder / "coffee" / "00.jpg"
    real = folders.sha256_file

    def flaky(path):
        if Path(path) == unreadable:
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(folders, "sha256_file", flaky)
    report = sync_index(index)
    assert report.removed == [] and report.unchanged == 6 and report.version is None
    assert any("Permission denied" in reason for _, reason in report.failed)


def test_sync_reads_the_source_as_the_build_did(folder_index, fixture_data):
    folder, index = folder_index
    (folder / "train" / "trip").mkdir(parents=True)  # now it looks like an ImageFolder dataset
    shutil.copy(fixture_data / "train" / "rocket" / "rocket_00.jpg", folder / "train" / "trip" / "x.jpg")
    report = sync_index(index, dry_run=True)
    assert [a["path"] for a in report.added] == [str(folder / "train" / "trip" / "x.jpg")] and report.removed == []
    assert all(row["label"] is None for row in _rows(index))  # built with --labels none: still none


def test_metadata_case_and_types_do_not_make_every_sync_a_change(fixture_data, model, tmp_path):
    table = tmp_path / "t.csv"
    photos = sorted((fixture_data / "train" / "chelsea").glob("*.jpg"))[:3]
    table.write_text("path,Owner,year\n" + "".join(f"{p},{'ann' if n else ''},{2000 + n}\n"
                                                    for n, p in enumerate(photos)))
    index, _, _ = build_index(table, model, tmp_path / "index")
    for _ in range(2):
        report = sync_index(index, model=model)
        assert (report.changed, report.version) == ([], None)
    with Index(index) as idx:
        assert len(idx.ids_where("year > :y", {"y": 2000})) == 2


def test_an_index_built_before_sources_syncs_from_its_dataset(built_index, fixture_data, tmp_path, model):
    import json

    copy = Path(shutil.copytree(built_index, tmp_path / "old"))
    live = copy / "manifests" / (copy / "CURRENT").read_text().strip()
    manifest = json.loads(live.read_text())
    manifest["build"] = {"data": str(fixture_data), "split": "train"}
    live.write_text(json.dumps(manifest))
    report = sync_index(copy, model=model, dry_run=True)
    assert (report.added, report.changed, report.removed, report.unchanged) == ([], [], [], 32)


def _rows(index_dir) -> list[dict]:
    with Index(index_dir) as idx:
        return list(idx.items(range(idx.manifest["next_id"])).values())


def test_a_folder_that_cannot_be_listed_keeps_its_items(folder_index, monkeypatch):
    """As for a user without root's override after `chmod 000 SRC/sub`: the folder's files are neither seen nor
    gone, and the folder is reported."""
    import os

    folder, index = folder_index
    locked = folder / "coffee"
    real = os.scandir

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    before = len(Index(index))
    monkeypatch.setattr(os, "scandir", scandir)
    report = sync_index(index)
    assert report.removed == [] and report.version is None and len(Index(index)) == before
    assert report.unchanged == before
    assert any(str(locked) in reason and "cannot list" in reason for _, reason in report.failed)


def test_items_added_from_outside_the_source_are_kept_and_reported_unless_pruned(folder_index, fixture_data,
                                                                                   tmp_path):
    from simengine.index.update import add_images

    folder, index = folder_index
    elsewhere = tmp_path / "elsewhere" / "rocket.jpg"
    elsewhere.parent.mkdir()
    shutil.copy(fixture_data / "train" / "rocket" / "rocket_00.jpg", elsewhere)
    [added] = add_images(index, [elsewhere]).added
    report = sync_index(index)
    assert report.kept_outside == [{"path": str(elsewhere), "id": added}] and report.removed == []
    assert report.version is None and str(elsewhere) in paths(index)
    pruned = sync_index(index, prune=True)
    assert pruned.removed == [{"path": str(elsewhere), "id": added}] and str(elsewhere) not in paths(index)


def test_files_that_cannot_be_indexed_are_listed_once_and_never_promised_by_a_dry_run(folder_index, fixture_data):
    """An unreadable file and a copy of an indexed image: a dry run calls them what the sync will find, and after
    the sync that found them, each is `as_before` until its content or its fate changes."""
    folder, index = folder_index
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    shutil.copy(folder / "coffee" / "00.jpg", folder / "copy.jpg")
    first = sync_index(index, dry_run=True)
    assert first.added == [{"path": str(folder / "broken.jpg"), "id": None}]  # only embedding can tell it fails
    assert [p for p, _ in first.duplicates] == [str(folder / "copy.jpg")] and first.as_before == []
    synced = sync_index(index)
    assert [p for p, _ in synced.failed] == [str(folder / "broken.jpg")] and synced.as_before == []
    assert synced.version is None and synced.added == []  # nothing indexed changed: no new version
    for dry_run in (True, False):
        again = sync_index(index, dry_run=dry_run)
        assert again.added == [] and again.version is None
        assert sorted(again.as_before) == [str(folder / "broken.jpg"), str(folder / "copy.jpg")]
        assert [p for p, _ in again.failed] == [str(folder / "broken.jpg")]
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated again")  # new content: tried and told again
    (folder / "coffee" / "00.jpg").unlink()  # the copy's original is gone: the copy is indexed in its place
    changed = sync_index(index)
    assert changed.as_before == [] and [p for p, _ in changed.failed] == [str(folder / "broken.jpg")]
    assert [a["path"] for a in changed.added] == [str(folder / "copy.jpg")]


def test_a_dry_run_calls_a_renamed_file_an_addition_not_a_copy(folder_index):
    folder, index = folder_index
    (folder / "coffee" / "00.jpg").rename(folder / "moved.jpg")
    plan = sync_index(index, dry_run=True)
    assert [a["path"] for a in plan.added] == [str(folder / "moved.jpg")] and plan.duplicates == []
    assert [r["path"] for r in plan.removed] == [str(folder / "coffee" / "00.jpg")]
    done = sync_index(index)
    assert [a["path"] for a in done.added] == [str(folder / "moved.jpg")] and done.duplicates == []


def test_an_index_labelled_with_codes_keeps_them_when_synced_and_added_to(fixture_data, model, tmp_path):
    """An index built before labels were names (here from `scan_split` items, which keep the folder's code) syncs
    and grows with the codes it holds, never half codes and half names."""
    from simengine.data.folders import scan_split
    from simengine.index.update import add_images

    dataset = tmp_path / "dataset"
    shutil.copytree(fixture_data / "train" / "rocket", dataset / "train" / "n03888257")
    shutil.copytree(fixture_data / "train" / "coffee", dataset / "train" / "cup")
    index, _, _ = build_index(scan_split(dataset, "train"), model, tmp_path / "index")
    report = sync_index(index, dataset)
    assert report.changed == [] and report.added == [] and report.unchanged == 16
    shutil.copytree(fixture_data / "val" / "rocket", tmp_path / "more" / "n03888257")
    added = add_images(index, [tmp_path / "more"]).added
    with Index(index) as idx:
        assert {row["label"] for row in idx.items(added).values()} == {"n03888257"}


def test_sync_reads_the_label_column_the_build_was_given(fixture_data, bundle_dir, tmp_path):
    photos = sorted((fixture_data / "train" / "coffee").glob("*.jpg"))[:4]
    table = tmp_path / "noisy.csv"

    def write(wrong: int) -> None:
        table.write_text("path,noisy_labels_5\n" + "".join(
            f"{p},{'rocket' if n == wrong else 'coffee'}\n" for n, p in enumerate(photos)))

    write(0)
    index, _, _ = build_index(table, bundle_dir, tmp_path / "index", label_column="noisy_labels_5")
    write(1)  # the label of two rows changed in the table
    report = sync_index(index)
    assert sorted(c["path"] for c in report.changed) == sorted(str(p) for p in photos[:2])
    with Index(index) as idx:
        assert sorted(idx.info()["classes"].items()) == [("coffee", 3), ("rocket", 1)]
