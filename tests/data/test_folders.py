import time

import pytest

from simengine.data import folders as data
from simengine.data import imagenette as imagenette_module
from simengine.errors import SimengineError
from simengine.files import sha256_file


def test_scan_split_gives_path_class_split_sha(fixture_data):
    items = data.scan_split(fixture_data, "train")
    assert len(items) == 32
    assert {i.label for i in items} == {"coffee", "chelsea", "astronaut", "rocket"}
    first = items[0]
    assert first.split == "train" and len(first.sha256) == 64 and first.path.is_file()
    assert first.sha256 == sha256_file(first.path)


def test_scan_ignores_non_image_files_and_missing_split(fixture_data, tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "readme.txt").write_text("x")
    with pytest.raises(SimengineError, match="no images"):
        data.scan_split(tmp_path, "train")
    with pytest.raises(SimengineError, match="not found"):
        data.scan_split(fixture_data, "test")


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    explicit.mkdir()
    env.mkdir()
    monkeypatch.setenv("SIMENGINE_DATA", str(env))
    assert imagenette_module.resolve_data_dir(explicit) == explicit
    assert imagenette_module.resolve_data_dir() == env
    monkeypatch.delenv("SIMENGINE_DATA")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SimengineError, match="data fetch imagenette"):
        imagenette_module.resolve_data_dir()


def test_fetch_fails_fast_when_offline(tmp_path):
    start = time.monotonic()
    with pytest.raises(SimengineError, match="cannot download"):
        imagenette_module.fetch_imagenette(tmp_path, url="http://127.0.0.1:9/imagenette2-160.tgz", timeout=3)
    assert time.monotonic() - start < 5
    assert not list(tmp_path.glob("*.part"))


def test_real_imagenette_counts(imagenette):
    imagenette_module.verify_imagenette(imagenette)
