"""Thresholds for an index, calibrated on the indexed items that its model never trained on."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

from simengine.errors import SimengineError
from simengine.evaluation.decisions import Calibration, EvalSets, calibrate_decisions, pair_scores
from simengine.evaluation.thresholds import calibrate, roc_curve
from simengine.model.bundle import Model

log = logging.getLogger(__name__)

# What an index's calibration says when its items could not calibrate it.
UNCALIBRATED = ("the model bundle's thresholds: this collection has too few labels to calibrate on, so 'same class' "
                "here is an estimate carried over from the model's training classes")
MIN_HOLDOUT = 30  # fewer held-out items than this and calibration falls back to all indexed items
# Labelled examples: fewer pairs than MIN_PAIRS (or than MIN_EACH of either answer) calibrate nothing; below
# FEW_PAIRS the thresholds are kept but said to be loose (benchmarks/results/few_labels.md measures how loose).
MIN_PAIRS, MIN_EACH, FEW_PAIRS = 10, 3, 50
BOOTSTRAP_ROUNDS = 200


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


def calibrate_from_examples(model: Model, base: Calibration, pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                            items: tuple[np.ndarray, Sequence[str]] | None, source: str,
                            target_far: float | None = None, seed: int = 0) -> Calibration:
    """Thresholds from a few labelled examples: `pairs` (vectors a, vectors b, 1 = same class) and/or `items`
    (vectors, class labels; their balanced pairs join the labelled pairs). Each threshold is the bagged bootstrap
    median with its 95 % interval (see `evaluation.thresholds.calibrate`). The decision rule and its fusion weights
    stay `base`'s: a few dozen examples move a threshold well, not a rule. The triplet thresholds come from the
    items' triplets where at least 3 classes are labelled, else they keep `base`'s distance above the pair
    thresholds."""
    cosine, logit, same = [], [], []
    if pairs is not None:
        a, b, y = pairs
        cosine.append(np.einsum("ij,ij->i", a, b))
        logit.append(model.pair_logits(a, b))
        same.append(np.asarray(y, int))
    sets = None
    if items is not None:
        vectors, labels = items
        try:
            sets = EvalSets.draw(vectors, labels, model.pair_logits, min(len(labels) ** 2 // 2, 10_000), seed)
        except SimengineError:
            if pairs is None:
                raise SimengineError(f"{source}: labelled items calibrate only with at least 3 classes of 2 or more "
                                     "images each") from None
        if sets is not None:
            cosine.append(sets.cosine)
            logit.append(sets.logit)
            same.append(sets.labels)
    cosine, logit, same = (np.concatenate(v) if v else np.zeros(0) for v in (cosine, logit, same))
    positives, negatives = int(same.sum()), int(len(same) - same.sum())
    if len(same) < MIN_PAIRS or min(positives, negatives) < MIN_EACH:
        raise SimengineError(f"{source}: {len(same)} labelled pairs ({positives} same, {negatives} different); "
                             f"calibration needs at least {MIN_PAIRS}, with {MIN_EACH} of each answer")
    if len(same) < FEW_PAIRS:
        log.warning("only %d labelled pairs: the thresholds are loose (see their interval)", len(same))
    pair_t, triplet_t = {}, {}
    for mode in base.pair:
        threshold = calibrate(pair_scores(mode, cosine, logit, base.fusion), same, target_far, seed=seed,
                              bootstrap=BOOTSTRAP_ROUNDS)
        pair_t[mode] = threshold
        if sets is not None:
            trio = sets.scores(mode, base.fusion)[1]
            triplet_t[mode] = calibrate(trio, sets.triplet_labels, target_far, seed=seed, bootstrap=BOOTSTRAP_ROUNDS)
        else:
            shift = base.triplet[mode].value - base.pair[mode].value
            triplet_t[mode] = dataclasses.replace(base.triplet[mode], value=threshold.value + shift, cv_accuracy=None,
                                                  examples=None, interval=None)
    return Calibration(base.default, base.fusion, pair_t, triplet_t, f"{source} ({len(same)} labelled pairs)")


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
    where the pair threshold falls on both. Without a sample (too few labelled items), only the threshold: estimated,
    or calibrated from labelled pairs (`calibrate_from_examples`, with its interval)."""
    threshold = calibration.pair[mode]
    out: dict[str, Any] = {"mode": mode, "threshold": threshold.value, "source": calibration.source,
                           "triplet_threshold": calibration.triplet[mode].value, "interval": threshold.interval,
                           "estimated": calibration.source.startswith(UNCALIBRATED)}
    if sample is None:  # no labelled items to draw from: thresholds estimated, or from labelled pairs
        return dict(out, pairs=0)
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
