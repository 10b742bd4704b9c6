"""The whole `simengine quantize` job as one library call: an int8 model of a bundle's backbone and its accuracy gate."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from simengine.errors import SimengineError


def quantize_model(model_dir: str | os.PathLike, data: str | os.PathLike, images: int | None = None,
                   gate_images: int = 0, gate: bool = True, seed: int = 0, progress: bool = False) -> dict:
    """The whole `simengine quantize` job: an int8 model of the bundle's backbone calibrated on `images` drawn
    from `data`, then the accuracy gate on labelled images the calibration did not use, whose verdict lets
    `--runtime auto` choose int8 on this machine. An ImageFolder dataset calibrates on train/ and gates on val/;
    anything else (a folder of class folders, a list, a table with labels) is split, calibration first. At most
    `gate_images` are gated (0: all). The gate's images are found before anything is quantized. Returns the int8
    record and the gate's rows."""
    import random

    from simengine.data.folders import scan_split
    from simengine.data.sources import is_image_folder, scan_source
    from simengine.model.builtin import resolve_model_dir
    from simengine.model.quantize import CALIBRATION_IMAGES, MIN_CALIBRATION_IMAGES

    images = CALIBRATION_IMAGES if images is None else images
    if images < MIN_CALIBRATION_IMAGES:
        raise SimengineError(f"at least {MIN_CALIBRATION_IMAGES} calibration images are needed, not {images}")
    root = Path(data)
    if root.is_dir() and is_image_folder(root) and (root / "val").is_dir():
        items, held_out = scan_split(root, "train"), (scan_split(root, "val") if gate else [])
        random.Random(seed).shuffle(items)
        calibration = items[:images]
    else:
        items = scan_source(root, labels="folders" if root.is_dir() else "auto", progress=progress).items
        random.Random(seed).shuffle(items)
        calibration, held_out = items[:images], [i for i in items[images:] if i.label is not None]
    if not calibration:
        raise SimengineError(f"{data}: no images")
    if gate and len({i.label for i in held_out}) < 2:
        raise SimengineError(f"{data}: the accuracy gate needs labelled images of two classes or more beyond the "
                             f"{len(calibration)} calibration images (class folders, or a table's label column); "
                             "without a passing gate `--runtime auto` never chooses int8 (--no-gate to skip it)")
    if gate_images:
        held_out = random.Random(seed).sample(held_out, min(gate_images, len(held_out)))
    return quantize_and_gate(resolve_model_dir(model_dir), [i.path for i in calibration],
                             [(i.path, i.label) for i in held_out] if gate else None, progress)


def quantize_and_gate(bundle: Path, calibration: Sequence[str | os.PathLike],
                      gate: Sequence[tuple[str | os.PathLike, str]] | None, progress: bool = False) -> dict:
    """An int8 model of the bundle's backbone calibrated on the `calibration` images, written beside its export (and
    beside its general twin's, which shares it), then the accuracy gate on the labelled `gate` images (none: no
    gate) with the bundle's heads and its twin's: the verdict that lets `--runtime auto` choose it here (and that of
    OpenVINO bf16 where the CPU has it)."""
    from simengine.model.bundle import ONNX_FILES, load_bundle
    from simengine.model.encoder import Encoder
    from simengine.model.general import GENERAL_DIR, has_twin
    from simengine.model.quantize import copy_int8_model, quantize_backbone
    from simengine.model.runtime_choice import BF16_FLAGS, cpu_facts, make_runtime

    model = load_bundle(bundle, "onnxruntime")
    onnx, export = model.path / ONNX_FILES["backbone"], model.config["onnx"]["backbone"]["sha256"]
    record = quantize_backbone(onnx, export, model.encoder.load_image, calibration, progress)
    twins = []
    if has_twin(bundle):
        copy_int8_model(model.path, model.path / GENERAL_DIR)
        twins.append(load_bundle(model.path / GENERAL_DIR, "onnxruntime"))
    result = {"model": str(model.path), "int8": record, "gate": None}
    if gate is None:
        return result
    from simengine.model.runtime_gate import run_gate

    int8 = Encoder(model.config["encoder"], make_runtime(onnx, "openvino-int8", export), model.encoder.dim)
    encoders = {"onnxruntime": model.encoder, "openvino-int8": int8}  # the bundle is loaded on ONNX Runtime fp32
    if any(flag in cpu_facts()[1] for flag in BF16_FLAGS):  # bf16 is a candidate here too, and needs a verdict
        encoders["openvino-bf16"] = Encoder(model.config["encoder"], make_runtime(onnx, "openvino-bf16", export),
                                            model.encoder.dim)
    result["gate"] = run_gate(model, encoders, [p for p, _ in gate], [label for _, label in gate],
                              reference="onnxruntime", twins=twins)
    return result
