"""int8 post-training quantization: the model written beside the export with a record that guards it, bad
calibration files skipped, and the accuracy gate's verdict recorded for `--runtime auto`."""

import json
import shutil

import numpy as np
import pytest

from simengine.errors import ImageLoadError, SimengineError
from simengine.model import runtime_choice
from simengine.model.bundle import ONNX_FILES, load_bundle
from simengine.model.quantize import INT8_MODEL, INT8_RECORD, int8_model, int8_sha256, quantize_backbone
from simengine.model.int8 import quantize_model


@pytest.fixture(scope="module")
def quantized(bundle_dir, fixture_data, tmp_path_factory):
    """A copy of the fixture bundle, quantized on 16 of its training images and gated on its val split."""
    copy = shutil.copytree(bundle_dir, tmp_path_factory.mktemp("int8") / "bundle")
    return copy, quantize_model(copy, fixture_data, images=16)


def test_the_int8_model_is_written_with_its_record_and_runs(quantized, val):
    bundle, result = quantized
    record = result["int8"]
    export = json.loads((bundle / "config.json").read_text())["onnx"]["backbone"]["sha256"]
    xml, found = int8_model(bundle / ONNX_FILES["backbone"], export)
    assert xml == bundle / INT8_MODEL and found == record
    assert record["calibration_images"] == 16 and record["calibration_skipped"] == 0
    assert record["kept_in_float"][0].startswith("/conv_stem") and record["kept_in_float"][-1].startswith("/conv_head")
    fp32, int8 = load_bundle(bundle, "onnxruntime"), load_bundle(bundle, "openvino-int8")
    assert int8.encoder.runtime.features_tag == f"int8-{int8_sha256(record)[:12]}"  # cached apart from fp32
    paths = [p for ps in val.values() for p in ps]
    a, b = fp32.embed_paths(paths).vectors, int8.embed_paths(paths).vectors
    assert float(np.mean(np.sum(a * b, axis=1))) > 0.9  # both L2-normalised: close, not equal
    assert np.abs(a - b).max() > 1e-4  # it really runs int8 kernels


def test_the_gate_verdict_is_recorded_for_the_int8_model(quantized):
    bundle, result = quantized
    rows = {r["runtime"]: r for r in result["gate"]}
    bf16 = {"openvino-bf16"} if set(runtime_choice.cpu_facts()[1]) & set(runtime_choice.BF16_FLAGS) else set()
    assert set(rows) == {"onnxruntime", "openvino-int8"} | bf16 and rows["onnxruntime"]["largest_difference"] == 0
    int8 = rows["openvino-int8"]
    assert int8["images"] == 12  # the val split, none of it used for calibration
    verdict = runtime_choice.gate_result(int8_sha256(result["int8"]), "openvino-int8")
    assert verdict["passed"] == int8["recorded"]
    assert verdict["reference"]["precision_at_1"] == rows["onnxruntime"]["precision_at_1"]
    assert verdict["measured"]["map_at_r_in_fp32_index"] == int8["map_at_r_in_fp32_index"]


def test_a_changed_or_foreign_int8_model_is_not_used(quantized, tmp_path):
    bundle, _ = quantized
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    onnx = copy / ONNX_FILES["backbone"]
    export = json.loads((copy / "config.json").read_text())["onnx"]["backbone"]["sha256"]
    assert int8_model(onnx, export) is not None
    assert int8_model(onnx, "0" * 64) is None  # quantized from another export
    weights = copy / INT8_MODEL.replace(".xml", ".bin")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert int8_model(onnx, export) is None
    with pytest.raises(SimengineError, match="simengine quantize"):
        load_bundle(copy, "openvino-int8")
    assert "openvino-int8" not in runtime_choice.candidates([], onnx, export)


def test_bad_calibration_files_are_skipped_and_too_few_refused(bundle_dir, tmp_path, val):
    copy = shutil.copytree(bundle_dir, tmp_path / "bundle")
    model = load_bundle(copy, "onnxruntime")
    onnx, export = copy / ONNX_FILES["backbone"], model.config["onnx"]["backbone"]["sha256"]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    paths = [p for ps in val.values() for p in ps]
    with pytest.raises(SimengineError, match="only 12 calibration images decoded \\(1 skipped\\)"):
        quantize_backbone(onnx, export, model.encoder.load_image, [*paths, broken])
    assert not (copy / INT8_RECORD).exists()
    with pytest.raises(ImageLoadError):
        model.encoder.load_image(broken)


def test_the_gate_needs_labels_and_says_so_before_quantizing(bundle_dir, fixture_data, tmp_path):
    copy = shutil.copytree(bundle_dir, tmp_path / "bundle")
    listed = tmp_path / "images.txt"
    listed.write_text("".join(f"{p}\n" for p in sorted((fixture_data / "train").rglob("*.jpg"))))
    with pytest.raises(SimengineError, match="labelled images of two classes"):
        quantize_model(copy, listed, images=16)
    assert not (copy / INT8_RECORD).exists()
    result = quantize_model(copy, listed, images=16, gate=False)  # --no-gate: written, never chosen by auto
    assert result["gate"] is None and (copy / INT8_RECORD).is_file()


def test_a_folder_of_class_folders_is_split_into_calibration_and_gate(bundle_dir, fixture_data, tmp_path):
    copy = shutil.copytree(bundle_dir, tmp_path / "bundle")
    result = quantize_model(copy, fixture_data / "train", images=16)  # 32 images in 4 class folders
    assert result["int8"]["calibration_images"] == 16
    assert {r["images"] for r in result["gate"]} == {16}


def test_an_int8_model_ships_as_its_constants_and_comes_back_byte_for_byte(quantized, tmp_path):
    from simengine.model.quantize import int8_delta, restore_int8

    bundle, result = quantized
    export = json.loads((bundle / "config.json").read_text())["onnx"]["backbone"]["sha256"]
    delta, facts = int8_delta(bundle / ONNX_FILES["backbone"], export, (3, 224, 224))
    assert 0 < sum(v.nbytes for v in delta.values()) < 0.5 * 2**20  # small beside the 5 MB model
    target = tmp_path / "elsewhere"
    target.mkdir()
    shutil.copyfile(bundle / ONNX_FILES["backbone"], target / ONNX_FILES["backbone"])
    record = restore_int8(target / ONNX_FILES["backbone"], export, (3, 224, 224), delta, facts)
    assert record["bin_sha256"] == result["int8"]["bin_sha256"]
    assert int8_model(target / ONNX_FILES["backbone"], export)[1] == record
    key = next(iter(delta))
    wrong = dict(delta, **{key: np.zeros((3, 1, 7), delta[key].dtype)})
    assert restore_int8(target / ONNX_FILES["backbone"], export, (3, 224, 224), wrong, facts) is None
    changed = dict(delta, **{key: delta[key] + 1})
    assert restore_int8(target / ONNX_FILES["backbone"], export, (3, 224, 224), changed, facts) is None
    assert int8_model(target / ONNX_FILES["backbone"], export) is None  # nothing half-made is left to use
