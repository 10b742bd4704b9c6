"""Thresholds for an index, calibrated on the indexed items that its model never trained on."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

from simengine.evaluation.decisions import Calibration, EvalSets, calibrate_decisions
from simengine.evaluation.thresholds import roc_curve
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
    chosen = calibration_rows(rows, model)
    if chosen is None:
        log.info("too few labelled items to calibrate on: the model's own thresholds are kept (an estimate here)")
        return dataclasses.replace(model.calibration, source=f"{UNCALIBRATED} ({model.calibration.source})")
    held, source = chosen
    return calibrate_decisions(vectors[held], [rows[n]["label"] for n in held], model.pair_logits, source,
                               target_far=target_far, seed=seed)


def calibration_rows(rows: Sequence[dict[str, Any]], model: Model) -> tuple[list[int], str] | None:
    """(positions in `rows`, what they are) of the labelled rows that calibrate an index: those its model held out
    in training, else all labelled ones; None when too few are labelled (fewer than 6 items or 3 labels)."""
    holdout = set(model.config.get("holdout_sha256", []))
    labelled = [n for n, r in enumerate(rows) if r["label"] is not None]
    held = [n for n in labelled if rows[n]["sha256"] in holdout]
    if len(labelled) < 6 or len({rows[n]["label"] for n in labelled}) < 3:  # an unlabelled collection, say
        return None
    if len(held) < MIN_HOLDOUT or len({rows[n]["label"] for n in held}) < 3:
        log.warning("fewer than %d indexed items were held out from training: calibrating on all indexed items, "
                    "which may overlap the training data", MIN_HOLDOUT)
        return labelled, "all indexed items (may overlap training data)"
    return held, "indexed items held out from training"


def score_curves(model: Model, calibration: Calibration, mode: str,
                 sample: tuple[np.ndarray, Sequence[str], str] | None, n: int = 2_000, bins: int = 40,
                 seed: int = 0) -> dict[str, Any]:
    """What the thresholds of `mode` stand on, to be drawn: score histograms of balanced same / different-label
    pairs drawn from `sample` (vectors, labels and what they are: rows `calibration_rows` chose), the ROC curve, and
    where the pair threshold falls on both. Without a sample (too few labels), only the (estimated) threshold."""
    threshold = calibration.pair[mode]
    out: dict[str, Any] = {"mode": mode, "threshold": threshold.value, "source": calibration.source,
                           "triplet_threshold": calibration.triplet[mode].value,
                           "estimated": calibration.source.startswith(UNCALIBRATED)}
    if sample is None:
        return dict(out, estimated=True, pairs=0)
    vectors, labels, source = sample
    sets = EvalSets.draw(vectors, labels, model.pair_logits, n, seed)
    scores, same = sets.scores(mode, calibration.fusion)[0], sets.labels.astype(bool)
    edges = np.linspace(min(scores.min(), threshold.value), max(scores.max(), threshold.value), bins + 1)
    fpr, tpr = roc_curve(scores, same)
    accepted = scores >= threshold.value
    return dict(out, pairs=len(scores), drawn_from=source, edges=np.round(edges, 5).tolist(),
                same=np.histogram(scores[same], edges)[0].tolist(),
                different=np.histogram(scores[~same], edges)[0].tolist(),
                roc={"fpr": np.round(fpr, 5).tolist(), "tpr": np.round(tpr, 5).tolist()},
                auc=float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)),  # the trapezoids under the curve
                at_threshold={"tpr": float(accepted[same].mean()), "fpr": float(accepted[~same].mean()),
                              "accuracy": float((accepted == same).mean())})
