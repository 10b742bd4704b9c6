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
    # From labelled examples: how many, and the 95 % bootstrap interval of the threshold.
    examples: int | None = None
    interval: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        # The few-label fields only where set: a manifest older simengine versions read must not carry them.
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ("examples", "interval")}


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


def best_accuracy_threshold(scores: Sequence[float], labels: Sequence[int],
                            balanced: bool = False) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy, by one sort and a sweep; ties go to the middle of the best run.
    `balanced`: the mean of the two classes' accuracies, so that a sample with more of one answer than the other
    (labelled pairs as people pick them) gives the threshold a balanced one would."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    values, tp, fp, n_pos, n_neg = _sweep(scores, labels)
    correct = tp / max(n_pos, 1) + (n_neg - fp) / max(n_neg, 1) if balanced else (tp + (n_neg - fp)) / len(scores)
    best = np.flatnonzero(correct >= correct.max() - 1e-12)
    pick = best[len(best) // 2]
    return float(values[pick]), float(correct[pick] / 2 if balanced else correct[pick])


def far_threshold(scores: Sequence[float], labels: Sequence[int], target_far: float) -> tuple[float, float]:
    """(threshold, accuracy) of the most accepting threshold whose false-accept rate is <= target_far."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    values, tp, fp, n_pos, n_neg = _sweep(scores, labels)
    ok = np.flatnonzero(fp <= target_far * n_neg)
    pick = ok[-1]
    return float(values[pick]), float((tp[pick] + n_neg - fp[pick]) / len(scores))


def bootstrap_thresholds(scores: np.ndarray, labels: np.ndarray, rule, rounds: int, seed: int) -> np.ndarray:
    """The rule's threshold on `rounds` stratified bootstrap resamples (each class resampled within itself, so
    every resample has both answers in the sample's proportions)."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in (0, 1)]
    values = np.empty(rounds)
    for r in range(rounds):
        take = np.concatenate([rng.choice(g, len(g)) for g in groups])
        values[r] = rule(scores[take], labels[take])[0]
    return values


def _bagged(rule, rounds: int, seed: int):
    """The rule whose threshold is the median of `rule`'s over bootstrap resamples."""
    def bagged(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        value = float(np.median(bootstrap_thresholds(scores, labels, rule, rounds, seed)))
        return value, float(((scores >= value) == labels.astype(bool)).mean())
    return bagged


def calibrate(scores: Sequence[float], labels: Sequence[int], target_far: float | None = None,
              folds: int = 10, seed: int = 0, bootstrap: int = 0) -> Threshold:
    """The threshold on all data, with a k-fold cross-validated accuracy of the same rule.

    `bootstrap` > 0 is for few labelled examples: the threshold is then the median of the rule's thresholds over
    that many bootstrap resamples (bagging: steadier than one sweep over a few dozen scores; the folds use it too),
    classes weigh equally, and the 95 % interval of those thresholds is kept."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(int)
    rule = (lambda s, y: far_threshold(s, y, target_far)) if target_far is not None else best_accuracy_threshold
    interval = None
    if bootstrap:
        single = rule if target_far is not None else (lambda s, y: best_accuracy_threshold(s, y, balanced=True))
        spread = bootstrap_thresholds(scores, labels, single, bootstrap, seed)
        interval = (float(np.percentile(spread, 2.5)), float(np.percentile(spread, 97.5)))
        rule = _bagged(single, bootstrap, seed)
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
        examples=len(scores) if bootstrap else None,
        interval=interval,
    )
