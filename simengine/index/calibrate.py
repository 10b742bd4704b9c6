"""Thresholds for an index, calibrated on the indexed items that its model never trained on."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

from simengine.evaluation.decisions import Calibration, calibrate_decisions
from simengine.model.bundle import Model

log = logging.getLogger(__name__)

# What an index's calibration says when its items could not calibrate it.
UNCALIBRATED = ("the model bundle's thresholds: this collection has too few labels to calibrate on, so 'same class' "
                "here is an estimate carried over from the model's training classes")
MIN_HOLDOUT = 30  # fewer held-out items than this and calibration falls back to all indexed items


def calibrate_index(rows: Sequence[dict[str, Any]], vectors: np.ndarray, model: Model,
                    target_far: float | None = None, seed: int = 0) -> Calibration:
    """Thresholds from balanced pairs/triplets over labelled `rows` (row-aligned with `vectors`) that the model held
    out in training, else over all of them; the model's own calibration when too few are labelled."""
    holdout = set(model.config.get("holdout_sha256", []))
    labelled = [n for n, r in enumerate(rows) if r["label"] is not None]
    held = [n for n in labelled if rows[n]["sha256"] in holdout]
    source = "indexed items held out from training"
    if len(labelled) < 6 or len({rows[n]["label"] for n in labelled}) < 3:  # an unlabelled collection, say
        log.info("too few labelled items to calibrate on: the model's own thresholds are kept (an estimate here)")
        return dataclasses.replace(model.calibration, source=f"{UNCALIBRATED} ({model.calibration.source})")
    if len(held) < MIN_HOLDOUT or len({rows[n]["label"] for n in held}) < 3:
        log.warning("fewer than %d indexed items were held out from training: calibrating on all indexed items, "
                    "which may overlap the training data", MIN_HOLDOUT)
        held, source = labelled, "all indexed items (may overlap training data)"
    return calibrate_decisions(vectors[held], [rows[n]["label"] for n in held], model.pair_logits, source,
                               target_far=target_far, seed=seed)
