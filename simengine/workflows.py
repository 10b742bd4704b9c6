"""Whole jobs that the CLI runs, each one library call: e.g. building an index from a dataset, training its model
first when none is given."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from simengine.index.build import AddReport, build_index
from simengine.index.store import DEFAULT_ROOT

log = logging.getLogger(__name__)


def build_index_from_dataset(
    data_dir: str | os.PathLike, out: str | os.PathLike = DEFAULT_ROOT / "default", splits: Sequence[str] = ("train",),
    model_dir: str | os.PathLike | None = None, index_type: str = "auto", target_far: float | None = None,
    runtime: str = "auto", train_options=None, finetune_options=None, backbone: str | None = None,
    weights: str | os.PathLike | None = None, progress: bool = False,
) -> tuple[Path, AddReport, Path]:
    """Index the given splits of an ImageFolder dataset; without `model_dir`, train a model into `<out>-model` first.
    Returns (index path, report, model bundle path)."""
    from simengine.data.folders import scan_split
    from simengine.model.bundle import load_bundle

    out, data_dir = Path(out), Path(data_dir)
    if model_dir is None:
        from simengine.training.fit import TrainOptions
        from simengine.training.pipeline import train_model

        model_dir = out.parent / f"{out.name}-model"
        log.info("no model given: training one first, into %s", model_dir)
        train_model(data_dir, model_dir, train_options or TrainOptions(), backbone, weights, finetune_options,
                    runtime, progress)
    model = load_bundle(model_dir, runtime)
    items = [item for split in splits for item in scan_split(data_dir, split)]
    index, report = build_index(items, model, out, index_type, target_far, progress,
                                build_info={"data": str(data_dir.resolve()), "split": ",".join(splits)})
    return index, report, Path(model_dir)
