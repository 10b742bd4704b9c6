"""Building an index: one entry, `build_index`, for every kind of collection, used by the CLI, the Python API and
the benchmarks alike.

A source is a folder tree, an ImageFolder dataset, a list of paths, a CSV / parquet table (see
`data.sources.scan_source`), already scanned `Item`s, or an embeddings folder made by `simengine embed` (indexed
from its vectors within a memory budget, see `from_embeddings`). The index lands at `out`: a new index, or the
next version of the one there (new ids, its earlier items removed).
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from simengine.data.folders import Item
from simengine.errors import SimengineError
from simengine.index.calibrate import calibrate_index
from simengine.index.embedding import AddReport, embed_items, item_rows, unique_by_content
from simengine.index.from_embeddings import FromEmbeddingsReport, build_from_embeddings, is_embeddings_folder
from simengine.index.model_link import replace_collection
from simengine.index.target import check_target, commit_build
from simengine.model.bundle import Model, load_bundle
from simengine.store.layout import DEFAULT_ROOT
from simengine.store.lock import DEFAULT_TIMEOUT_S
from simengine.store.writer import StoreWriter

log = logging.getLogger(__name__)

Source = Union[str, os.PathLike, Sequence[Item]]
EMBEDDINGS = ("auto", "trained")


@dataclass
class Built:
    """What a build made: the index, the model bundle that embedded it, and the build's report (`AddReport` for
    images; `FromEmbeddingsReport` for an embeddings folder)."""

    index: Path
    report: AddReport | FromEmbeddingsReport
    model: Path

    def __iter__(self):  # `index, report, model = build_index(...)`
        return iter((self.index, self.report, self.model))

    def to_dict(self) -> dict[str, Any]:
        return {"index": str(self.index), **self.report.to_dict()}


def build_index(
    source: Source, model: Model | str | os.PathLike | None = None, out: str | os.PathLike = DEFAULT_ROOT / "default",
    *, splits: Sequence[str] = ("train",), labels: str = "auto", path_column: str = "path",
    label_column: str | None = None, index_type: str = "auto",
    target_far: float | None = None, embedding: str = "auto", runtime: str = "auto", train: bool = False,
    train_options=None,
    finetune_options=None, backbone: str | None = None, weights: str | os.PathLike | None = None,
    max_index_memory: int | None = None, segments: int = 1, use_ray: bool = False, ray_address: str | None = None,
    workers: int | None = None, progress: bool = False, seed: int = 0, timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Built:
    """Index `source` with `model` (a loaded `Model`, a bundle's path, or "builtin") at `out`.

    Without a model, the default one embeds: indexes/default-model where one was trained, else the built-in model
    (see `model.builtin`). With `train`, a model is trained first into `<out>-model`, which needs an ImageFolder
    dataset. With `embedding` "auto", a collection mostly unlike the classes the model was trained on is indexed
    with the bundle's general twin (see `model.general`); "trained" keeps the model as given. An embeddings folder is indexed with the model
    that embedded it, in the most exact index type that fits `max_index_memory` bytes, filled in `segments` parts
    (on Ray with `use_ray`)."""
    out = Path(out)
    in_place = check_target(out, index_type)  # decided before the slow work: a build racing it fails at the swap
    if embedding not in EMBEDDINGS:
        raise SimengineError(f"embedding must be one of {', '.join(EMBEDDINGS)}, not {embedding!r}")
    embeddings_folder = isinstance(source, (str, os.PathLike)) and is_embeddings_folder(Path(source))
    if train and (model is not None or not isinstance(source, (str, os.PathLike)) or embeddings_folder):
        raise SimengineError("train=True trains a model on an ImageFolder dataset: give no model, and a folder")
    if embeddings_folder:
        if model is None:
            raise SimengineError(f"{source} is an embeddings folder: give the model bundle that embedded it")
        model = _resolved(model)
        report = build_from_embeddings(source, out, model, max_index_memory, index_type, segments, use_ray,
                                       ray_address, workers, target_far, seed, progress, timeout_s)
        return Built(out, report, model.path if isinstance(model, Model) else model)
    if train:
        model = _train_for(Path(source), out, runtime, train_options, finetune_options, backbone, weights, progress)
    if isinstance(source, (str, os.PathLike)):
        items, build_info, skipped = _scan(Path(source), splits, labels, path_column, label_column, progress)
    else:
        items, build_info, skipped = list(source), {}, []
    if not items:
        raise SimengineError("no image could be embedded; nothing to index")
    model = _resolved(model)  # after the scan: a wrong path is said before the built-in model is prepared
    loaded = model if isinstance(model, Model) else load_bundle(model, runtime)
    chosen, choice = _model_for_collection(loaded, items, embedding, runtime, progress)
    report = _embed_and_commit(items, chosen, out, in_place, index_type, target_far, seed,
                               dict(build_info, embedding=choice) if choice is not None else build_info, progress,
                               timeout_s)
    report.failed[:0] = skipped  # what the scan skipped comes first; the build record counts embedding failures
    return Built(out, report, loaded.path)


def _resolved(model: Model | str | os.PathLike | None) -> Model | Path:
    """A loaded model as it is; a path, "builtin" or None (the default model) as a bundle directory."""
    from simengine.model.builtin import resolve_model_dir

    return model if isinstance(model, Model) else resolve_model_dir(model)


def _scan(source: Path, splits: Sequence[str], labels: str, path_column: str, label_column: str | None,
          progress: bool) -> tuple[list[Item], dict[str, Any], list[tuple[str, str]]]:
    """The source's items, what the build records of it, and the entries skipped (path, reason)."""
    from simengine.data.sources import scan_source

    collection = scan_source(source, labels, splits, path_column, progress, label_column=label_column)
    if not collection.items:
        raise SimengineError(f"{source}: no images found" + (f" ({len(collection.skipped)} entries skipped)"
                                                             if collection.skipped else ""))
    return collection.items, {
        "source": str(source.resolve()), "source_kind": collection.kind, "labels": labels,
        "path_column": path_column, "split": ",".join(splits) if collection.kind == "imagefolder" else None,
        "folder_labels": collection.folder_labels, "label_names": True, "label_column": label_column,
    }, collection.skipped


def _train_for(source: Path, out: Path, runtime: str, train_options, finetune_options, backbone, weights,
               progress: bool) -> Path:
    """A model trained on the ImageFolder dataset `source`, into `<out>-model`."""
    from simengine.data.sources import is_image_folder

    if not (source.is_dir() and is_image_folder(source)):
        raise SimengineError(f"{source} is not an ImageFolder dataset (train/<class>/...), so no model can be "
                             "trained on it; give it as SOURCE to index it with the default model")
    from simengine.training.fit import TrainOptions
    from simengine.training.pipeline import train_model

    model_dir = out.parent / f"{out.name}-model"
    log.info("no model given: training one first, into %s", model_dir)
    train_model(source, model_dir, train_options or TrainOptions(), backbone, weights, finetune_options, runtime,
                progress)
    return model_dir


def _model_for_collection(model: Model, items: Sequence[Item], embedding: str, runtime: str, progress: bool
                          ) -> tuple[Model, dict[str, Any] | None]:
    """The model, or its general twin when most of the collection is unlike the classes it was trained on (see
    `model.general`), judged on a seeded sample whose backbone features stay cached for the build that follows."""
    from simengine.model.feature_cache import FeatureCache
    from simengine.model.general import CHOICE_SAMPLE, choose_bundle

    if embedding == "trained":
        return model, None

    def sample_features() -> np.ndarray:
        sample = random.Random(0).sample(list(items), min(CHOICE_SAMPLE, len(items)))
        features, _ = FeatureCache(model.encoder, flip=model.flip).features(
            [str(i.path) for i in sample], [i.sha256 for i in sample], progress=progress)
        return features[~np.isnan(features).any(axis=1)]

    chosen, choice = choose_bundle(model.path, sample_features)
    return (model if chosen == model.path else load_bundle(chosen, runtime)), choice


def _embed_and_commit(items: Sequence[Item], model: Model, out: Path, in_place: bool, index_type: str,
                      target_far: float | None, seed: int, build_info: dict[str, Any], progress: bool,
                      timeout_s: float) -> AddReport:
    started = time.time()
    report = AddReport()
    vectors, kept, report.failed = embed_items(model, unique_by_content(items, report), progress)
    if not kept:
        raise SimengineError("no image could be embedded; nothing to index")
    rows = item_rows(kept)
    calibration = calibrate_index(rows, vectors, model, target_far, seed).to_dict()
    info = dict(build_info, embed_and_build_seconds=round(time.time() - started, 1),
                duplicates=len(report.duplicates), failed=len(report.failed))

    def write(writer: StoreWriter) -> None:
        report.added = replace_collection(writer, vectors, rows, model, calibration, index_type, info)

    commit_build(out, model, in_place, write, "build", timeout_s)
    return report
