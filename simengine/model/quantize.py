"""int8 post-training quantization of a bundle's backbone with NNCF, the quantizer made for OpenVINO.

The int8 model is written beside the bundle's `backbone.onnx` (`backbone-int8.xml` + `.bin`) with a record
(`backbone-int8.json`) naming the export it was quantized from, how, on which images, and the hashes of both files.
The record is written last, so a half-written model is never used; `int8_model` checks all of it before use.

The first and the last convolution stay in floating point, as is common practice (Krishnamoorthi 2018): the stem
sees the raw image and the head writes the features that are the embedding. Quantizing them too cost the Imagenette
gate 0.0035 in triplet accuracy; keeping them cost 0.0015 at most (benchmarks/results/latency.md). Whether `auto`
may run the model is the accuracy gate's verdict (`model.runtime_gate`), never this module's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from simengine.errors import SimengineError
from simengine.files import sha256_file

if TYPE_CHECKING:  # the CLI imports this module's constants at start-up, which must not load numpy
    import numpy as np

log = logging.getLogger(__name__)

INT8_MODEL = "backbone-int8.xml"
INT8_RECORD = "backbone-int8.json"
CALIBRATION_IMAGES = 300  # NNCF's default subset size
MIN_CALIBRATION_IMAGES = 16
PRESET = "mixed"  # symmetric weights, asymmetric activations: the more accurate of NNCF's two presets here, as fast
RECORD_VERSION = 1
TEMP_PREFIX = ".int8."


def int8_model(onnx_path: str | os.PathLike, export_sha256: str) -> tuple[Path, dict[str, Any]] | None:
    """The int8 model beside `onnx_path` and its record, when it was quantized from this export and both of its files
    match the record; else None."""
    folder = Path(onnx_path).parent
    try:
        stamps = tuple((st.st_size, st.st_mtime_ns, st.st_ino) for st in (f.stat() for f in _files(folder)))
    except OSError:
        return None
    found = _checked(folder, stamps)
    if found is None or found[1].get("source_export_sha256") != export_sha256:
        return None
    return found


def _files(folder: Path) -> tuple[Path, Path, Path]:
    """The int8 model's record, graph and weights in `folder`."""
    return folder / INT8_RECORD, folder / INT8_MODEL, folder / Path(INT8_MODEL).with_suffix(".bin")


@functools.lru_cache(maxsize=64)
def _checked(folder: Path, stamps: tuple) -> tuple[Path, dict[str, Any]] | None:
    """The files hashed once per version of them (`stamps`: size, mtime, inode of each): a cold query asks three
    times."""
    record_path, xml, weights = _files(folder)
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("record_version") != RECORD_VERSION:
        return None
    if sha256_file(xml) != record.get("xml_sha256") or sha256_file(weights) != record.get("bin_sha256"):
        log.warning("%s: does not match its record; not used", xml)
        return None
    return xml, record


def int8_installed() -> bool:
    """Whether NNCF and OpenVINO, which quantize and run the int8 model, are installed."""
    from importlib.util import find_spec

    return find_spec("nncf") is not None and find_spec("openvino") is not None


def quantize_backbone(onnx_path: str | os.PathLike, export_sha256: str, load_image: Callable[[Path], np.ndarray],
                      paths: Sequence[str | os.PathLike], progress: bool = False) -> dict[str, Any]:
    """Quantize the export at `onnx_path` to int8, calibrated on `paths` (decoded and preprocessed by `load_image`,
    which raises ImageLoadError for a bad file: it is skipped and counted), and write it beside the export. With
    `progress`, NNCF's progress bars go to stderr. Returns the record."""
    from simengine.errors import ImageLoadError

    onnx_path = Path(onnx_path)
    batches, skipped, used = [], 0, []
    for path in paths:
        try:
            batches.append(load_image(Path(path))[None])
            used.append(str(path))
        except ImageLoadError as exc:
            log.warning("calibration image skipped: %s", exc)
            skipped += 1
    if len(batches) < MIN_CALIBRATION_IMAGES:
        raise SimengineError(f"only {len(batches)} calibration images decoded ({skipped} skipped); "
                             f"at least {MIN_CALIBRATION_IMAGES} are needed")
    quantized, kept = _quantize(onnx_path, batches, progress)
    return _save(quantized, onnx_path, {
        "source_export_sha256": export_sha256, "kept_in_float": kept, "calibration_images": len(batches),
        "calibration_skipped": skipped, "calibration_paths_sha256": _digest(used)})


def _quantize(onnx_path: Path, batches: list[np.ndarray], progress: bool):
    """NNCF's post-training quantization of the export, calibrated on `batches`; and the layers kept in float."""
    # NNCF imports torch's C++ extension helper, which warns "No CUDA runtime is found" on every machine without one.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        raise SimengineError(f"int8 quantization needs OpenVINO and NNCF ({exc}); pip install "
                             "nncf openvino") from exc
    model = ov.Core().read_model(str(onnx_path))
    kept = _first_and_last_convolution(model)
    # NNCF logs and draws its progress bars on stdout, where `--json` output goes.
    from nncf.common.logging.logger import stdout_handler

    nncf.set_log_level(logging.WARNING)
    stdout_handler.setStream(sys.stderr)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(sys.stderr if progress else devnull):
        quantized = nncf.quantize(model, nncf.Dataset(batches), preset=nncf.QuantizationPreset(PRESET),
                                  subset_size=len(batches), ignored_scope=nncf.IgnoredScope(names=kept))
    return quantized, kept


def _save(quantized, onnx_path: Path, facts: dict[str, Any]) -> dict[str, Any]:
    """Write the int8 model beside the export, then its record (`facts` and the files' hashes), last."""
    from importlib import metadata

    import openvino as ov

    from simengine.files import write_durably

    folder = onnx_path.parent
    for leftover in folder.glob(f"{TEMP_PREFIX}*"):  # from a run that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    (folder / INT8_RECORD).unlink(missing_ok=True)  # the model files change under it from here on
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX, dir=folder) as tmp:
        # compress_to_fp16=False: the layers kept in float keep fp32 weights, as the export has them.
        ov.save_model(quantized, str(Path(tmp) / INT8_MODEL), compress_to_fp16=False)
        for produced in Path(tmp).iterdir():
            os.replace(produced, folder / produced.name)
    xml = folder / INT8_MODEL
    record = {"record_version": RECORD_VERSION, **facts, "xml_sha256": sha256_file(xml),
              "bin_sha256": sha256_file(xml.with_suffix(".bin")), "nncf": metadata.version("nncf"),
              "openvino": metadata.version("openvino"), "preset": PRESET}
    write_durably(folder / INT8_RECORD, json.dumps(record, indent=2).encode())
    return record


# An int8 model ships as its difference from quantizing the same export on one placeholder image: the constants
# that calibration decides (activation ranges, corrected biases), 0.14 MB for EfficientNet-Lite0, where the model is
# 5 MB. Quantizing on the placeholder again and putting those constants back gives the same weights file, byte for
# byte, which is checked (constants are matched by position: NNCF numbers their names per process).
def _placeholder(input_shape: tuple[int, ...]) -> list[np.ndarray]:
    from simengine.model.runtimes import probe_batch

    return [probe_batch(input_shape, 1)]


def _constants(model) -> list:
    return [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"]


def _structure(model) -> list[str]:
    return [op.get_type_name() for op in model.get_ordered_ops()]


def int8_delta(onnx_path: str | os.PathLike, export_sha256: str, input_shape: tuple[int, ...]
               ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The int8 model beside `onnx_path` as its difference from a placeholder quantization of the export: the
    constants that differ, by position ("c<index>"), and what `restore_int8` checks (the record's facts)."""
    import numpy as np
    import openvino as ov

    found = int8_model(onnx_path, export_sha256)
    if found is None:
        raise SimengineError(f"{Path(onnx_path).parent}: no int8 model quantized from this export")
    xml, record = found
    placeholder, _ = _quantize(Path(onnx_path), _placeholder(input_shape), False)
    calibrated = ov.Core().read_model(str(xml))
    if _structure(placeholder) != _structure(calibrated):
        raise SimengineError(f"{xml}: not the graph NNCF makes of this export here")
    delta = {f"c{i}": b.get_data() for i, (a, b) in enumerate(zip(_constants(placeholder), _constants(calibrated)))
             if not np.array_equal(a.get_data(), b.get_data())}
    return delta, {k: v for k, v in record.items() if k not in ("xml_sha256",)}


def restore_int8(onnx_path: str | os.PathLike, export_sha256: str, input_shape: tuple[int, ...],
                 delta: dict[str, np.ndarray], facts: dict[str, Any]) -> dict[str, Any] | None:
    """Make the int8 model `int8_delta` described, beside `onnx_path`; its record, or None (and why, in the log)
    when NNCF here does not make the same graph or the weights file comes out otherwise."""
    from openvino import opset13

    quantized, kept = _quantize(Path(onnx_path), _placeholder(input_shape), False)
    constants = _constants(quantized)
    for key, value in delta.items():
        index = int(key[1:])
        old = constants[index] if index < len(constants) else None
        if old is None or tuple(old.get_output_shape(0)) != value.shape or old.get_data().dtype != value.dtype:
            log.warning("no int8 model: the shipped quantization does not fit the graph NNCF %s makes here",
                        facts.get("nncf"))
            return None
        new = opset13.constant(value)
        new.set_friendly_name(old.get_friendly_name())
        old.output(0).replace(new.output(0))
    record = _save(quantized, Path(onnx_path), {k: v for k, v in facts.items()
                                                if k not in ("record_version", "bin_sha256", "nncf", "openvino")}
                   | {"source_export_sha256": export_sha256, "kept_in_float": kept,
                      "restored_from": "a calibrated quantization's constants"})
    if record["bin_sha256"] != facts["bin_sha256"]:
        log.warning("no int8 model: its weights came out otherwise than when it was made (NNCF %s, OpenVINO %s "
                    "then)", facts.get("nncf"), facts.get("openvino"))
        for path in _files(Path(onnx_path).parent):
            path.unlink(missing_ok=True)
        return None
    return record


def copy_int8_model(source: Path, target: Path) -> None:
    """Copy the int8 model beside one export to a folder holding the same export (a bundle's general twin); the
    record goes last, as when it was written."""
    record, *files = _files(source)
    (target / INT8_RECORD).unlink(missing_ok=True)
    for path in files:
        shutil.copyfile(path, target / path.name)
    shutil.copyfile(record, target / INT8_RECORD)


def int8_sha256(record: dict[str, Any]) -> str:
    """One hash naming the int8 model (both of its files): what a gate verdict for it holds for."""
    import hashlib

    return hashlib.sha256((record["xml_sha256"] + record["bin_sha256"]).encode()).hexdigest()


def _first_and_last_convolution(model) -> list[str]:
    convolutions = [op.get_friendly_name() for op in model.get_ordered_ops()
                    if op.get_type_name() in ("Convolution", "GroupConvolution")]
    if not convolutions:
        raise SimengineError("the backbone has no convolutions to quantize")
    return list(dict.fromkeys([convolutions[0], convolutions[-1]]))


def _digest(lines: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
