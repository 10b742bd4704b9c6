"""Decision thresholds on similarity scores (higher = more alike): accuracy-optimal, target FAR, and 10-fold CV."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Threshold:
    """Decide "same" when score >= value."""

    value: float
    mode: str
    train_accuracy: float
    cv_accuracy: float | None = None
    far: float | None = None
    frr: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _sweep(scores: np.ndarray, labels: np.ndarray):
    """Candidate thresholds (midpoints between distinct sorted scores, plus both ends) and their TP/FP counts."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(bool)
    tp, fp = np.cumsum(y), np.cumsum(~y)
    last_of_run = np.r_[s[1:] != s[:-1], True]  # accept through the end of a run of ties
    cut_tp, cut_fp = np.r_[0, tp[last_of_run]], np.r_[0, fp[last_of_run]]
    edges = s[last_of_run]
    nxt = np.r_[edges[1:], edges[-1] - 1.0]
    values = np.r_[edges[0] + 1.0, (edges + nxt) / 2]
    return values, cut_tp, cut_fp, int(y.sum()), int((~y).sum())


def roc_curve(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(false accept rates, true accept rates) at every threshold of the sweep, from accepting nothing to accepting
    everything; tied scores are accepted together."""
    _, tp, fp, n_pos, n_neg = _sweep(np.asarray(scores, np.float64), np.asarray(labels))
    return fp / max(n_neg, 1), tp / max(n_pos, 1)


def best_accuracy_threshold(scores: Sequence[float], labels: Sequence[int]) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy, by one sort and a sweep; ties go to the middle of the best run."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    values, tp, fp, n_pos, n_neg = _sweep(scores, labels)
    correct = tp + (n_neg - fp)
    best = np.flatnonzero(correct == correct.max())
    pick = best[len(best) // 2]
    return float(values[pick]), float(correct[pick] / len(scores))


def far_threshold(scores: Sequence[float], labels: Sequence[int], target_far: float) -> tuple[float, float]:
    """(threshold, accuracy) of the most accepting threshold whose false-accept rate is <= target_far."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    values, tp, fp, n_pos, n_neg = _sweep(scores, labels)
    ok = np.flatnonzero(fp <= target_far * n_neg)
    pick = ok[-1]
    return float(values[pick]), float((tp[pick] + n_neg - fp[pick]) / len(scores))


def calibrate(scores: Sequence[float], labels: Sequence[int], target_far: float | None = None,
              folds: int = 10, seed: int = 0) -> Threshold:
    """The threshold on all data, with a k-fold cross-validated accuracy of the same rule."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(int)
    rule = (lambda s, y: far_threshold(s, y, target_far)) if target_far is not None else best_accuracy_threshold
    value, train_acc = rule(scores, labels)
    fold_of = np.random.default_rng(seed).permutation(len(scores)) % folds
    correct = 0
    for k in range(folds):
        test = fold_of == k
        t, _ = rule(scores[~test], labels[~test])
        correct += int(((scores[test] >= t) == labels[test].astype(bool)).sum())
    same = scores >= value
    y = labels.astype(bool)
    return Threshold(
        value=value,
        mode="far" if target_far is not None else "accuracy",
        train_accuracy=train_acc,
        cv_accuracy=correct / len(scores),
        far=float((same & ~y).sum() / max(1, (~y).sum())),
        frr=float((~same & y).sum() / max(1, y.sum())),
    )
