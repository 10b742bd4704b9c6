"""The "same picture" decision: a cosine threshold on backbone features, calibrated on generated copies.

Positives are (original, generated copy) pairs; negatives are (original, another photo of the same class), the
hardest pairs a collection holds that are not duplicates. A threshold that separates those means "a copy of this
picture", not "the same kind of thing". The backbone's features, not the trained head's: the head is built to call
photos of one class alike (on Imagenette val with generated copies, 0.877 balanced accuracy against 0.99).
"""

from __future__ import annotations

import numpy as np

from simengine.evaluation.metrics import normalise
from simengine.evaluation.thresholds import Threshold, calibrate


def same_picture_threshold(originals: np.ndarray, copies: np.ndarray, negatives: np.ndarray,
                           target_far: float | None = None, seed: int = 0) -> Threshold:
    """Threshold on the cosine of backbone features, from row-aligned (original, copy) and (original, negative)
    feature pairs; with `target_far`, the most accepting threshold whose false-accept rate stays within it (pairs
    of different pictures far outnumber copies in a collection, so precision needs a low FAR)."""
    if not len(originals) == len(copies) == len(negatives) or len(originals) < 2:
        raise ValueError("calibration needs at least 2 row-aligned originals, copies and negatives")
    a = normalise(originals)
    positive = (a * normalise(copies)).sum(axis=1)
    negative = (a * normalise(negatives)).sum(axis=1)
    scores = np.concatenate([positive, negative])
    labels = np.concatenate([np.ones(len(positive), int), np.zeros(len(negative), int)])
    return calibrate(scores, labels, target_far, folds=min(10, len(originals)), seed=seed)
