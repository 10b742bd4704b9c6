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

if TYPE_CHECKING:
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


def quantize_backbone(onnx_path: str | os.PathLike, export_sha256: str, load_image: Callable[[Path], np.ndarray],
                      paths: Sequence[str | os.PathLike], progress: bool = False) -> dict[str, Any]:
    """Quantize the export at `onnx_path` to int8, calibrated on `paths` (decoded and preprocessed by `load_image`,
    which raises ImageLoadError for a bad file: it is skipped and counted), and write it beside the export. With
    `progress`, NNCF's progress bars go to stderr. Returns the record."""
    from importlib import metadata

    from simengine.errors import ImageLoadError

    try:
        import nncf
        import openvino as ov
    except ImportError as exc:
        raise SimengineError(f"int8 quantization needs OpenVINO and NNCF ({exc}); pip install 'simengine[int8]'"
                             ) from exc
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
    model = ov.Core().read_model(str(onnx_path))
    kept = _first_and_last_convolution(model)
    # NNCF logs and draws its progress bars on stdout, where `--json` output goes.
    from nncf.common.logging.logger import stdout_handler

    nncf.set_log_level(logging.WARNING)
    stdout_handler.setStream(sys.stderr)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(sys.stderr if progress else devnull):
        quantized = nncf.quantize(model, nncf.Dataset(batches), preset=nncf.QuantizationPreset(PRESET),
                                  subset_size=len(batches), ignored_scope=nncf.IgnoredScope(names=kept))
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
    record = {"record_version": RECORD_VERSION, "source_export_sha256": export_sha256,
              "xml_sha256": sha256_file(xml), "bin_sha256": sha256_file(xml.with_suffix(".bin")),
              "nncf": metadata.version("nncf"), "openvino": metadata.version("openvino"), "preset": PRESET,
              "kept_in_float": kept, "calibration_images": len(batches), "calibration_skipped": skipped,
              "calibration_paths_sha256": _digest(used)}
    from simengine.files import write_durably

    write_durably(folder / INT8_RECORD, json.dumps(record, indent=2).encode())
    return record


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
