"""Whole jobs that the CLI runs, each one library call: e.g. building an index from a dataset, training its model
first when none is given."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from simengine.errors import SimengineError
from simengine.index.build import AddReport, build_index, check_target
from simengine.index.store import DEFAULT_ROOT

if TYPE_CHECKING:
    from simengine.dedup.find import DuplicateReport
    from simengine.dedup.move import Move

log = logging.getLogger(__name__)


def build_index_from_source(
    source: str | os.PathLike, out: str | os.PathLike = DEFAULT_ROOT / "default", splits: Sequence[str] = ("train",),
    model_dir: str | os.PathLike | None = None, index_type: str = "auto", target_far: float | None = None,
    runtime: str = "auto", train_options=None, finetune_options=None, backbone: str | None = None,
    weights: str | os.PathLike | None = None, progress: bool = False, labels: str = "auto", path_column: str = "path",
) -> tuple[Path, AddReport, Path]:
    """Index a collection: an ImageFolder dataset (its `splits`), a folder tree, a text file of paths, or a CSV /
    parquet table (see `data.sources.scan_source`). Without `model_dir`, a model is trained into `<out>-model`
    first, which needs an ImageFolder dataset. Returns (index path, report, model bundle path)."""
    from simengine.data.sources import is_image_folder, scan_source
    from simengine.model.bundle import load_bundle

    out, source = Path(out), Path(source)
    check_target(out, index_type)
    if model_dir is None:
        if not (source.is_dir() and is_image_folder(source)):
            raise SimengineError(f"{source} is not an ImageFolder dataset (train/<class>/...), so no model can be "
                                 "trained on it: give --model DIR (e.g. indexes/default-model, which `make demo` "
                                 "trains on Imagenette)")
        from simengine.training.fit import TrainOptions
        from simengine.training.pipeline import train_model

        model_dir = out.parent / f"{out.name}-model"
        log.info("no model given: training one first, into %s", model_dir)
        train_model(source, model_dir, train_options or TrainOptions(), backbone, weights, finetune_options,
                    runtime, progress)
    collection = scan_source(source, labels, splits, path_column, progress)
    if not collection.items:
        raise SimengineError(f"{source}: no images found" + (f" ({len(collection.skipped)} entries skipped)"
                                                             if collection.skipped else ""))
    model = load_bundle(model_dir, runtime)
    model, choice = _model_for_collection(model, collection.items, runtime, progress)
    build_info = {"source": str(source.resolve()), "source_kind": collection.kind, "labels": labels,
                  "path_column": path_column, "split": ",".join(splits) if collection.kind == "imagefolder" else None,
                  "embedding": choice}
    index, report = build_index(collection.items, model, out, index_type, target_far, progress, build_info=build_info)
    report.failed[:0] = collection.skipped
    return index, report, Path(model_dir)


def _model_for_collection(model, items, runtime: str, progress: bool):
    """The model, or its general twin when most of the collection is unlike the classes it was trained on (see
    `model.general`), judged on a seeded sample whose backbone features stay cached for the build that follows."""
    import random

    import numpy as np

    from simengine.model.bundle import load_bundle
    from simengine.model.feature_cache import FeatureCache
    from simengine.model.general import CHOICE_SAMPLE, choose_bundle

    def sample_features() -> np.ndarray:
        sample = random.Random(0).sample(list(items), min(CHOICE_SAMPLE, len(items)))
        features, _ = FeatureCache(model.encoder, flip=model.flip).features(
            [str(i.path) for i in sample], [i.sha256 for i in sample], progress=progress)
        return features[~np.isnan(features).any(axis=1)]

    chosen, choice = choose_bundle(model.path, sample_features)
    return (model if chosen == model.path else load_bundle(chosen, runtime)), choice


def dedup_collection(source: str | os.PathLike, against: str | os.PathLike | None = None,
                     model_dir: str | os.PathLike | None = None, csv_path: str | os.PathLike | None = None,
                     html_path: str | os.PathLike | None = None, move_to: str | os.PathLike | None = None,
                     apply: bool = False, path_column: str = "path", progress: bool = False, runtime: str = "auto",
                     ) -> tuple["DuplicateReport", list["Move"], list["Move"], list[tuple[str, str]]]:
    """The whole `simengine dedup` job: find the duplicate groups, write the CSV and HTML reports asked for, and
    plan moving the duplicates to `move_to` (carried out only with `apply`). Returns (report, moves planned, moves
    done, files left in place as (path, reason)). Output paths are checked before any image is read."""
    from simengine.dedup.find import find_duplicates
    from simengine.dedup.move import apply_moves, check_target, plan_moves
    from simengine.dedup.report import write_csv, write_html

    if move_to:
        check_target(source, move_to)
    for output in (csv_path, html_path):
        if output and not Path(output).absolute().parent.is_dir():
            raise SimengineError(f"{output}: its folder does not exist")
    report = find_duplicates(source, against, model_dir, runtime=runtime, path_column=path_column, progress=progress)
    if csv_path:
        write_csv(report, csv_path)
    if html_path:
        write_html(report, html_path)
    planned = plan_moves(report, move_to) if move_to else []
    done, left = apply_moves(planned, move_to) if planned and apply else ([], [])
    return report, planned, done, left


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
    from simengine.model.bundle import ONNX_FILES, load_bundle
    from simengine.model.encoder import Encoder
    from simengine.model.quantize import CALIBRATION_IMAGES, MIN_CALIBRATION_IMAGES, quantize_backbone
    from simengine.model.runtime_choice import make_runtime

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
    model = load_bundle(model_dir, "onnxruntime")
    onnx, export = model.path / ONNX_FILES["backbone"], model.config["onnx"]["backbone"]["sha256"]
    record = quantize_backbone(onnx, export, model.encoder.load_image, [i.path for i in calibration], progress)
    result = {"model": str(model.path), "int8": record, "gate": None}
    if not gate:
        return result
    from simengine.evaluation.runtime_gate import run_gate

    int8 = Encoder(model.config["encoder"], make_runtime(onnx, "openvino-int8", export), model.encoder.dim)
    encoders = {"onnxruntime": model.encoder, "openvino-int8": int8}  # the bundle is loaded on ONNX Runtime fp32
    result["gate"] = run_gate(model, encoders, [i.path for i in held_out], [i.label for i in held_out],
                              reference="onnxruntime")
    return result
