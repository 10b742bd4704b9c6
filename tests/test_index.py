import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simengine.data import scan_split
from simengine.errors import IndexUnusableError, SimengineError
from simengine.index import Index, ItemRecord, build_index, resolve_index_dir, verify_index


def test_built_index_is_consistent(built_index):
    idx = Index(built_index)
    info = idx.info()
    assert info["items"] == 32 and info["index_type"] == "flat" and info["dim"] == 256
    assert set(info["classes"]) == {"coffee", "chelsea", "astronaut", "rocket"}
    assert idx.verify() == []
    row = idx.item(0)
    assert {"id", "path", "class", "split", "sha256", "width", "height", "added_at"} <= set(row)
    assert (row["width"], row["height"]) == (160, 160)
    manifest = idx.manifest
    assert manifest["model"]["encoder"]["backbone"] == "tf_efficientnet_lite0"
    assert set(manifest["calibration"]["pair"]) == {"distance", "head", "fused"}
    assert manifest["calibration"]["pair"]["distance"]["cv_accuracy"] is not None


def test_add_skips_duplicates_and_reports_bad_files(index_copy, fixture_data, tmp_path):
    new = sorted((fixture_data / "val" / "coffee").glob("*.jpg"))
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    already = sorted((fixture_data / "train" / "rocket").glob("*.jpg"))[0]
    report = Index(index_copy).add(new + [new[0], already, bad, tmp_path / "absent.jpg"])
    assert len(report.added) == 3
    assert [p for p, _ in report.duplicates] == [str(new[0]), str(already)]
    assert {Path(p).name for p, _ in report.failed} == {"broken.jpg", "absent.jpg"}
    reopened = Index(index_copy)
    assert len(reopened) == 35 and reopened.verify() == []
    assert reopened.item(report.added[0])["class"] == "coffee"


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_removed_items_never_come_back(fixture_data, model, bundle_dir, tmp_path, index_type):
    records = [ItemRecord(str(i.path), i.label, i.split, i.sha256) for i in scan_split(fixture_data, "train")]
    link, _ = build_index(records, model, bundle_dir, tmp_path / "idx", index_type=index_type)
    idx = Index(link)
    query = idx.vectors([3])
    assert 3 in idx.search(query, 5)[1][0]
    removed = idx.remove(["3", records[4].path])
    assert removed == [3, 4]
    for opened in (idx, Index(link)):
        sims, ids = opened.search(np.concatenate([query, opened.vectors([5])]), 32)
        assert not {3, 4} & set(ids.ravel().tolist())
        assert ids.shape == (2, 30) and (ids >= 0).all()
        assert opened.verify() == []
    with pytest.raises(SimengineError, match="no item with id 3"):
        idx.remove(["3"])


def test_failed_write_leaves_the_old_index(index_copy, fixture_data, monkeypatch):
    import simengine.index as index_module

    before = Index(index_copy)
    old_dir = before.dir

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(index_module, "_finish", crash)
    with pytest.raises(RuntimeError):
        before.add(sorted((fixture_data / "val" / "coffee").glob("*.jpg")))
    after = Index(index_copy)
    assert after.dir == old_dir and len(after) == 32 and after.verify() == []
    assert [p.name for p in index_copy.parent.iterdir() if p.name.startswith(".")] == [old_dir.name]


def test_kill_9_mid_write_leaves_the_old_index_loadable(index_copy, fixture_data):
    script = f"""
import time, simengine.index as m
from simengine.index import Index
real = m._finish
def slow(folder, *a, **k):
    real(folder, *a, **k)
    print("written", flush=True)
    time.sleep(60)
m._finish = slow
Index({str(index_copy)!r}).add({[str(p) for p in sorted((fixture_data / 'val').glob('*/*.jpg'))]!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert proc.stdout.readline().strip() == "written"  # the new version is complete but not yet swapped in
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    idx = Index(index_copy)
    assert len(idx) == 32 and idx.verify() == []


def test_verify_catches_a_deleted_row(index_copy):
    import sqlite3

    with sqlite3.connect(index_copy / "items.db") as db:
        db.execute("DELETE FROM items WHERE id = 7")
    with pytest.raises(IndexUnusableError):
        Index(index_copy)
    problems = verify_index(index_copy)
    assert any("have no SQLite item (ids [7])" in p for p in problems)
    assert any("items.db: sha256 differs" in p for p in problems)


def test_verify_catches_a_truncated_faiss_file(index_copy):
    path = index_copy / "vectors.faiss"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(IndexUnusableError, match="vectors.faiss"):
        Index(index_copy)
    assert any("corrupt FAISS file" in p for p in verify_index(index_copy))


def test_verify_catches_a_manifest_from_another_model(index_copy):
    manifest = json.loads((index_copy / "manifest.json").read_text())
    manifest["model"]["hash"] = "f" * 64
    manifest["model"]["encoder"]["backbone"] = "efficientnet_b0"
    (index_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexUnusableError, match="built with backbone=.efficientnet_b0."):
        Index(index_copy)
    problems = verify_index(index_copy)
    assert any("hash differs" in p for p in problems) and any("encoder differs" in p for p in problems)


def test_wrong_format_version_is_refused(index_copy):
    manifest = json.loads((index_copy / "manifest.json").read_text())
    manifest["format_version"] = 0
    (index_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexUnusableError, match="rebuild"):
        Index(index_copy)


def test_index_resolution(tmp_path, built_index):
    with pytest.raises(IndexUnusableError, match="no index found"):
        resolve_index_dir(root=tmp_path)
    os.symlink(built_index.resolve(), tmp_path / "only")
    assert resolve_index_dir(root=tmp_path) == tmp_path / "only"
    os.symlink(built_index.resolve(), tmp_path / "second")
    with pytest.raises(IndexUnusableError, match="several indexes"):
        resolve_index_dir(root=tmp_path)
    os.symlink(built_index.resolve(), tmp_path / "default")
    assert resolve_index_dir(root=tmp_path) == tmp_path / "default"


def test_recalibrate_with_target_far(index_copy):
    cal = Index(index_copy).recalibrate(target_far=0.0)
    assert cal.pair["distance"].mode == "far" and cal.pair["distance"].far == 0.0
    assert Index(index_copy).manifest["calibration"]["pair"]["distance"]["mode"] == "far"


def test_hnsw_build_is_reproducible(fixture_data, model, bundle_dir, tmp_path):
    records = [ItemRecord(str(i.path), i.label, i.split, i.sha256) for i in scan_split(fixture_data, "train")]
    a, _ = build_index(records, model, bundle_dir, tmp_path / "a", index_type="hnsw")
    b, _ = build_index(records, model, bundle_dir, tmp_path / "b", index_type="hnsw")
    assert (a / "vectors.faiss").read_bytes() == (b / "vectors.faiss").read_bytes()
