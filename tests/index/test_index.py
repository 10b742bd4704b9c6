import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from simengine.data.folders import scan_split
from simengine.errors import IndexUnusableError, SimengineError
from simengine.index.build import build_index
from simengine.index.reader import Index
from simengine.index.update import add_images, collect_garbage, compact_index, recalibrate_index, remove_items
from simengine.index.verify import verify_index
from simengine.store.layout import StoreDir, resolve_index_dir
from simengine.store.writer import StoreWriter
from store_workers import commit_rows


def live_manifest(path: Path) -> Path:
    return path / "manifests" / (path / "CURRENT").read_text().strip()


def snapshot_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_built_index_is_consistent(built_index):
    idx = Index(built_index)
    info = idx.info()
    assert info["items"] == 32 and info["segment_types"] == ["flat"] and info["dim"] == 256 and info["version"] == 1
    assert set(info["classes"]) == {"coffee", "chelsea", "astronaut", "rocket"}
    assert verify_index(built_index) == []
    row = idx.item(0)
    assert set(row) == {"id", "path", "label", "split", "sha256", "width", "height", "added_at"}
    assert (row["width"], row["height"]) == (160, 160) and Path(row["path"]).is_absolute()
    assert idx.manifest["model"]["encoder"]["backbone"] == "tf_efficientnet_lite0"
    assert set(idx.manifest["calibration"]["pair"]) == {"distance", "head", "fused"}
    assert not any(p.is_symlink() for p in built_index.rglob("*"))


def test_add_skips_duplicates_and_reports_bad_files(index_copy, fixture_data, tmp_path):
    new = sorted((fixture_data / "val" / "coffee").glob("*.jpg"))
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    already = sorted((fixture_data / "train" / "rocket").glob("*.jpg"))[0]
    (tmp_path / "pipe.jpg").unlink(missing_ok=True)
    os.mkfifo(tmp_path / "pipe.jpg")
    report = add_images(index_copy, new + [new[0], already, bad, tmp_path / "absent.jpg", tmp_path / "pipe.jpg"])
    assert report.added == [32, 33, 34]
    assert [p for p, _ in report.duplicates] == [str(new[0]), str(already)]
    assert report.duplicates[1][1] >= 0  # names the indexed twin
    reasons = {Path(p).name: r for p, r in report.failed}
    assert set(reasons) == {"broken.jpg", "absent.jpg", "pipe.jpg"}
    assert reasons["absent.jpg"] == f"{tmp_path / 'absent.jpg'}: no such file"
    assert reasons["pipe.jpg"] == f"{tmp_path / 'pipe.jpg'}: not a regular file"
    reopened = Index(index_copy)
    assert len(reopened) == 35 and reopened.version == 2 and verify_index(index_copy) == []
    assert reopened.item(32)["label"] == "coffee"


def test_add_to_a_relative_path_labels_by_the_real_folder(index_copy, fixture_data, monkeypatch):
    monkeypatch.chdir(fixture_data / "val" / "chelsea")
    report = add_images(index_copy, ["chelsea_00.jpg"])
    assert Index(index_copy).item(report.added[0])["label"] == "chelsea"


def test_added_images_are_labelled_the_way_the_index_was(fixture_data, model, tmp_path):
    """Folder names label what is added to an index of class folders (a known code by its name), never what is
    added to an unlabelled one or to one whose labels came from a table."""
    coded = tmp_path / "coded" / "n03888257"
    shutil.copytree(fixture_data / "val" / "rocket", coded)
    dataset, photos = tmp_path / "dataset", tmp_path / "photos"
    shutil.copytree(fixture_data / "train" / "coffee", dataset / "train" / "coffee")
    shutil.copytree(fixture_data / "train" / "chelsea", dataset / "train" / "chelsea")
    shutil.copytree(fixture_data / "train" / "astronaut", photos / "astronaut")
    table = tmp_path / "t.csv"
    table.write_text("path,label\n" + "".join(f"{p},mine\n" for p in sorted((photos / "astronaut").iterdir())))
    expected = {dataset: "parachute", photos: None, table: None}
    for source, label in expected.items():
        index, _, _ = build_index(source, model, tmp_path / f"index-{source.name}")
        added = add_images(index, [coded]).added
        rows = Index(index).items(added)
        assert added and {rows[i]["label"] for i in added} == {label}, source
        assert {rows[i].get("wnid") for i in added} == {"n03888257" if label else None}
    [given] = add_images(index, [fixture_data / "val" / "coffee" / "coffee_00.jpg"], label="cup").added
    assert Index(index).item(given)["label"] == "cup"


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_removed_items_never_come_back_and_ids_are_not_reused(fixture_data, model, tmp_path, index_type):
    items = scan_split(fixture_data, "train")
    path, _, _ = build_index(items, model, tmp_path / "idx", index_type=index_type)
    idx = Index(path)
    query = idx.vectors([3])
    assert 3 in idx.search(query, 5)[1][0]
    assert remove_items(path, ["3", str(items[4].path)]) == [3, 4]
    assert idx.refresh() and not idx.refresh()
    for opened in (idx, Index(path)):
        sims, ids = opened.search(np.concatenate([query, opened.vectors([5])]), 32)
        assert not {3, 4} & set(ids.ravel().tolist())
        assert ids.shape == (2, 30) and (ids >= 0).all()
        assert (np.diff(sims, axis=1) <= 1e-6).all()
    assert verify_index(path) == []
    with pytest.raises(SimengineError, match="no item with id 3"):
        remove_items(path, ["3"])
    readded = add_images(path, [items[3].path])  # the same picture comes back under a new id
    assert readded.added == [32]
    compact_index(path)
    assert Index(path).manifest["counts"] == {"items": 31, "removed": 0, "vectors": 31}
    assert add_images(path, [items[4].path]).added == [33]
    assert verify_index(path) == []


def test_failed_commit_leaves_the_live_version(index_copy, monkeypatch):
    before = snapshot_bytes(index_copy)
    real = StoreDir.point_current_at

    def crash(self, version):
        raise OSError("disk full")

    monkeypatch.setattr(StoreDir, "point_current_at", crash)
    with pytest.raises(OSError, match="disk full"):
        commit_rows(index_copy, 5, "x", 0)
    monkeypatch.setattr(StoreDir, "point_current_at", real)
    idx = Index(index_copy)
    assert idx.version == 1 and len(idx) == 32 and verify_index(index_copy) == []
    assert sorted(p.name for p in (index_copy / "segments").iterdir()) == [
        p.split("/")[-1] for p in before if p.startswith("segments/")]


def test_an_interrupt_after_current_moved_keeps_the_commit(index_copy, monkeypatch):
    import simengine.files as store_module  # write_durably, which commits CURRENT, lives there

    real = store_module.fsync_dir

    def interrupted(folder):
        real(folder)
        if Path(folder) == index_copy:
            raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "fsync_dir", interrupted)
    with pytest.raises(KeyboardInterrupt):
        commit_rows(index_copy, 5, "x", 0)
    monkeypatch.setattr(store_module, "fsync_dir", real)
    idx = Index(index_copy)
    assert idx.version == 2 and len(idx) == 37 and verify_index(index_copy) == []


def test_rebuilding_in_place_is_a_new_version_with_new_ids(index_copy, fixture_data, model):
    reader = Index(index_copy)
    path, report, _ = build_index(scan_split(fixture_data, "val"), model, index_copy)
    assert path == index_copy and report.added == list(range(32, 44))
    assert reader.refresh() and reader.version == 2 and len(reader) == 12
    with pytest.raises(SimengineError, match="no item with id 0"):
        reader.item(0)
    assert reader.item(32)["split"] == "val" and reader.manifest["segments"][0]["id_min"] == 32
    assert len(reader.manifest["segments"]) == 1 and verify_index(index_copy) == []


def test_small_segments_merge_geometrically_never_into_the_base(index_copy, monkeypatch):
    import math

    from simengine.store import faiss_factory

    written = []
    real_build = faiss_factory.build
    monkeypatch.setattr(faiss_factory, "build", lambda vectors, *a, **k: written.append(len(vectors)) or real_build(vectors, *a, **k))
    adds = 48
    for n in range(adds):
        commit_rows(index_copy, 3, f"batch{n}", n)
    idx = Index(index_copy)
    sizes = [s["vectors"] for s in idx.manifest["segments"]]
    assert sizes[0] == 32 and len(sizes) <= 2 + math.log2(adds) and sum(sizes) == 32 + 3 * adds
    assert all(a > b for a, b in zip(sizes[1:], sizes[2:]))  # falling sizes after the base
    assert sum(written) <= 3 * adds * (1 + math.log(adds, 1.5))  # each vector rewritten O(log n) times
    target = idx.vectors([40])
    assert idx.search(target, 1)[1][0][0] == 40
    remove_items(index_copy, ["40", "0"])
    manifest = compact_index(index_copy)
    assert len(manifest["segments"]) == 1 and manifest["counts"]["removed"] == 0
    assert Index(index_copy).search(target, 1)[1][0][0] != 40
    assert verify_index(index_copy) == []


def test_garbage_collection_keeps_recent_versions_and_files_in_use(index_copy):
    first = sorted(p.name for p in (index_copy / "segments").iterdir())
    remove_items(index_copy, ["1"])
    compact_index(index_copy)
    old_reader_files = set(first)
    assert old_reader_files <= {p.name for p in (index_copy / "segments").iterdir()}  # within the grace period
    done = collect_garbage(index_copy, grace_s=0)
    assert done["versions"] == 3 and done["segments"] == 1 and done["rows"] == 1  # versions 0 (empty), 1 and 2
    assert not old_reader_files & {p.name for p in (index_copy / "segments").iterdir()}
    assert len(list((index_copy / "manifests").iterdir())) == 1 and verify_index(index_copy) == []


def test_verify_is_read_only_and_names_problems(index_copy):
    with sqlite3.connect(index_copy / "items.db") as db:
        db.execute("DELETE FROM items WHERE id = 7")
    problems = verify_index(index_copy)
    assert any("have no item (ids [7])" in p for p in problems) and any("counts 32 items" in p for p in problems)

    (index_copy / "items.db").write_bytes(b"")
    before = snapshot_bytes(index_copy)
    problems = verify_index(index_copy)
    assert any(p.startswith("items.db:") for p in problems)
    assert snapshot_bytes(index_copy) == before  # not a byte written, the empty database included

    segment = next((index_copy / "segments").iterdir())
    segment.write_bytes(segment.read_bytes()[:1000])
    assert any("sha256 differs" in p for p in verify_index(index_copy))
    with pytest.raises(IndexUnusableError, match="bytes, the manifest says"):
        Index(index_copy)
    live_manifest(index_copy).write_text("{not json")
    assert len(verify_index(index_copy)) == 1 and "corrupt" in verify_index(index_copy)[0]


def test_verify_catches_a_manifest_from_another_model(index_copy):
    path = live_manifest(index_copy)
    manifest = json.loads(path.read_text())
    manifest["model"]["hash"] = "f" * 64
    manifest["model"]["encoder"]["backbone"] = "efficientnet_b0"
    path.write_text(json.dumps(manifest))
    problems = verify_index(index_copy)
    assert any("hash differs" in p for p in problems)


def test_format_1_is_refused_with_how_to_rebuild(tmp_path, built_index):
    old = tmp_path / ".default.20260101T000000-abc123"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format_version": 1}))
    os.symlink(old.name, tmp_path / "default")
    for call in (lambda: Index(tmp_path / "default"), lambda: resolve_index_dir(tmp_path / "default"),
                 lambda: StoreWriter(tmp_path / "default")):
        with pytest.raises(IndexUnusableError, match="format 1 .* rebuild it with `simengine index build --out .* --model"):
            call()
    assert verify_index(tmp_path / "default")[0].startswith(f"{tmp_path / 'default'}: index format 1")


def test_build_replaces_a_format_1_index_in_place(tmp_path, fixture_data, model):
    old = tmp_path / ".default.20260101T000000-abc123"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format_version": 1}))
    os.symlink(old.name, tmp_path / "default")
    path, _, _ = build_index(scan_split(fixture_data, "val"), model, tmp_path / "default")
    assert not path.is_symlink() and not old.exists() and len(Index(path)) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default"]
    with pytest.raises(SimengineError, match="not an index"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "file").write_text("x")
        build_index(scan_split(fixture_data, "val"), model, tmp_path / "other")


def test_index_resolution(tmp_path, built_index):
    with pytest.raises(IndexUnusableError, match="no index found"):
        resolve_index_dir(root=tmp_path)
    shutil.copytree(built_index, tmp_path / "only")
    assert resolve_index_dir(root=tmp_path) == tmp_path / "only"
    shutil.copytree(built_index, tmp_path / "second")
    with pytest.raises(IndexUnusableError, match="several indexes"):
        resolve_index_dir(root=tmp_path)
    shutil.copytree(built_index, tmp_path / "default")
    assert resolve_index_dir(root=tmp_path) == tmp_path / "default"
    with pytest.raises(IndexUnusableError, match="no index here"):
        resolve_index_dir(tmp_path / "nowhere")


def test_recalibrate_with_target_far(index_copy):
    cal = recalibrate_index(index_copy, target_far=0.0)
    assert cal.pair["distance"].mode == "far" and cal.pair["distance"].far == 0.0
    idx = Index(index_copy)
    assert idx.manifest["calibration"]["pair"]["distance"]["mode"] == "far" and idx.version == 2


def test_hnsw_build_is_reproducible(fixture_data, model, tmp_path):
    items = scan_split(fixture_data, "train")
    a, _, _ = build_index(items, model, tmp_path / "a", index_type="hnsw")
    b, _, _ = build_index(items, model, tmp_path / "b", index_type="hnsw")
    segment = lambda p: next((p / "segments").iterdir()).read_bytes()  # noqa: E731
    assert segment(a) == segment(b)


# --- the directory is the index: copies, archives and moves ------------------------------------------------------

def _copy_with_cp(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)


def _copy_with_tar(src: Path, dst: Path) -> None:
    archive = dst.parent / "index.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname="packed")
    with tarfile.open(archive) as tar:
        tar.extractall(dst.parent / "unpacked", filter="data")
    os.rename(dst.parent / "unpacked" / "packed", dst)


@pytest.mark.parametrize("copy", [_copy_with_cp, _copy_with_tar], ids=["cp -r", "tar"])
def test_a_copy_is_a_full_independent_index(copy, index_copy, tmp_path, val):
    from simengine.query.engine import Engine

    original = snapshot_bytes(index_copy)
    copied = tmp_path / "elsewhere" / "copy"
    copied.parent.mkdir()
    copy(index_copy, copied)
    assert Engine.open(copied).pair(val["coffee"][0], val["coffee"][1]).same
    assert add_images(copied, val["rocket"]).added == [32, 33, 34]
    assert remove_items(copied, ["0"]) == [0]
    assert verify_index(copied) == [] and len(Index(copied)) == 34
    assert snapshot_bytes(index_copy) == original  # writes to the copy never touch the original
    assert len(Index(index_copy)) == 32 and verify_index(index_copy) == []


def test_a_moved_index_works(index_copy, tmp_path, val):
    moved = tmp_path / "moved"
    os.rename(index_copy, moved)
    assert add_images(moved, val["chelsea"][:1]).added == [32]
    assert verify_index(moved) == [] and Index(moved).item(32)["label"] == "chelsea"


def _other_model(model, folder: Path):
    """The same bundle under another hash (one calibration value changed), loaded."""
    from simengine.model.bundle import load_bundle

    shutil.copytree(model.path, folder)
    config = json.loads((folder / "config.json").read_text())
    config["calibration"]["pair"]["distance"]["value"] += 0.01
    (folder / "config.json").write_text(json.dumps(config))
    other = load_bundle(folder)
    assert other.hash != model.hash
    return other


def test_rebuilding_with_another_model_keeps_both_until_the_old_is_unused(index_copy, fixture_data, model, tmp_path, val):
    from simengine.query.engine import Engine

    other = _other_model(model, tmp_path / "other-model")
    engine = Engine.open(index_copy)
    damaged = index_copy / "models" / other.hash[:16]
    damaged.mkdir(parents=True)
    (damaged / "config.json").write_text("{half a copy")  # what an interrupted copy would leave
    build_index(scan_split(fixture_data, "train"), other, index_copy)
    manifest = json.loads(live_manifest(index_copy).read_text())
    assert manifest["model_dir"] == f"models/{other.hash[:16]}" and manifest["model"]["hash"] == other.hash
    assert (index_copy / "model").is_dir() and verify_index(index_copy) == []  # the old version may still be read
    assert engine.pair(val["coffee"][0], val["coffee"][1]).same and engine.model.hash == other.hash
    with pytest.raises(IndexUnusableError, match="built with model"):
        add_images(index_copy, val["rocket"][:1], model=model)
    collect_garbage(index_copy, grace_s=0)
    assert not (index_copy / "model").exists() and verify_index(index_copy) == []


def test_a_reader_follows_its_directory_replaced_by_a_copy(index_copy, tmp_path, val):
    reader = Index(index_copy)
    copy = tmp_path / "copy"
    shutil.copytree(index_copy, copy)
    add_images(copy, val["rocket"][:1])
    os.rename(index_copy, tmp_path / "old")
    os.rename(copy, index_copy)  # what a restore or an rsync does: another directory, same index, newer version
    assert reader.refresh() and reader.version == 2
    assert reader.item(32)["label"] == "rocket" and reader.search(reader.vectors([32]), 1)[1][0][0] == 32


def test_a_build_never_replaces_what_is_not_an_index(tmp_path, fixture_data, model):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"keep me")
    os.symlink(photos, tmp_path / "link")
    for out in (photos, tmp_path / "link"):
        with pytest.raises(SimengineError, match="not an index"):
            build_index(scan_split(fixture_data, "val"), model, out)
    assert (photos / "a.jpg").read_bytes() == b"keep me"


def test_a_full_disk_during_a_build_is_one_clear_error(tmp_path, fixture_data, model, monkeypatch):
    import errno

    def no_space(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(shutil, "copyfile", no_space)  # what copytree's copy2 calls
    with pytest.raises(SimengineError, match=r"cannot copy the model bundle into .*No space left on device"):
        build_index(scan_split(fixture_data, "val"), model, tmp_path / "idx")
    assert list(tmp_path.iterdir()) == []  # nothing half-built left behind


def test_verify_names_a_corrupt_onnx_export(index_copy):
    from simengine.store.layout import StoreDir

    model = StoreDir(index_copy).attached_dir(json.loads(live_manifest(index_copy).read_text()))
    export = model / "embedding_head.onnx"
    export.chmod(0o644)
    export.write_bytes(export.read_bytes()[:-10] + b"\x00" * 10)
    assert verify_index(index_copy) == [
        "the model's ONNX exports are unusable (embedding_head.onnx does not match its recorded hash): "
        "queries fall back to torch"]


@pytest.mark.parametrize("build, has_labels, expected", [
    ({"folder_labels": True, "labels": "auto"}, True, True),
    ({"folder_labels": False, "labels": "auto", "source_kind": "imagefolder"}, True, False),
    ({"data": "/data/imagenette2-160"}, True, True),  # built with --data, before sources existed
    ({}, True, True),  # items given from Python: their labels, whatever they are
    ({}, False, False),
    ({"source_kind": "embeddings", "labels": "auto"}, True, True),
    ({"source_kind": "folder", "labels": "none"}, False, False),
    ({"source_kind": "csv", "labels": "auto"}, True, False),  # a table's labels are never folder names
    ({"source_kind": "folder", "labels": "folders"}, True, True),
])
def test_which_indexes_label_added_images_by_folder(build, has_labels, expected):
    from simengine.index.update import labels_from_folders

    assert labels_from_folders({"build": build}, has_labels) is expected
