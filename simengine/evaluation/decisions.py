"""How the embedding distance and the pair head combine into pair and triplet decisions, and their calibration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from simengine.evaluation.thresholds import Threshold, calibrate
from simengine.data.evalsets import sample_eval_triplets, sample_pairs

MODES = ("distance", "head", "fused")
TRIPLET_PAIRS = ((0, 1), (0, 2), (1, 2))

PairLogits = Callable[[np.ndarray, np.ndarray], np.ndarray]


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


@dataclass(frozen=True)
class Fusion:
    """Logistic regression on (cosine similarity, pair-head logit)."""

    bias: float
    w_cosine: float
    w_logit: float

    def __call__(self, cosine: np.ndarray, logit: np.ndarray) -> np.ndarray:
        return sigmoid(self.bias + self.w_cosine * cosine + self.w_logit * logit)


def fit_fusion(cosine: np.ndarray, logit: np.ndarray, labels: np.ndarray, l2: float = 1e-3, iters: int = 50) -> Fusion:
    """Logistic regression on (cosine, pair-head logit) with both weights kept >= 0, lightly L2-regularised.

    Non-negative weights make the fused score monotonic: a pair that is more similar by either signal is never
    less likely the same. (Unconstrained, the two correlated signals fit a negative cosine weight, and a fish then
    "matched" a uniform green image.) The problem is convex, so its optimum is the unconstrained optimum of one face
    of the constraints: fit each subset of the two weights, keep the feasible fit with the lowest loss.
    """
    x = np.column_stack([np.ones_like(cosine), cosine, logit]).astype(np.float64)
    y = np.asarray(labels, np.float64)
    best, best_loss = np.zeros(3), np.inf
    for free in ([0, 1, 2], [0, 2], [0, 1], [0]):
        w = np.zeros(3)
        w[free] = _logistic_irls(x[:, free], y, l2, iters)
        if (w[1:] < 0).any():
            continue
        p = np.clip(sigmoid(x @ w), 1e-12, 1 - 1e-12)
        loss = -np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)) + 0.5 * l2 * w @ w
        if loss < best_loss:
            best, best_loss = w, loss
    return Fusion(*map(float, best))


def _logistic_irls(x: np.ndarray, y: np.ndarray, l2: float, iters: int) -> np.ndarray:
    """Newton's method (IRLS) for an L2-regularised logistic regression."""
    w = np.zeros(x.shape[1])
    for _ in range(iters):
        p = sigmoid(x @ w)
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def pair_scores(mode: str, cosine: np.ndarray, logit: np.ndarray, fusion: Fusion | None) -> np.ndarray:
    """One similarity score per pair (higher = more alike) under a decision mode."""
    if mode == "distance":
        return cosine
    if mode == "head":
        return sigmoid(logit)
    if mode == "fused":
        return fusion(cosine, logit)
    raise ValueError(f"unknown decision mode {mode!r}; choose one of {', '.join(MODES)}")


@dataclass
class Calibration:
    """Per-mode thresholds for pairs and for the triplet question, the fusion weights, and the default mode."""

    default: str
    fusion: Fusion
    pair: dict[str, Threshold]
    triplet: dict[str, Threshold]
    source: str

    def to_dict(self) -> dict:
        return {
            "default": self.default,
            "fusion": vars(self.fusion),
            "pair": {m: t.to_dict() for m, t in self.pair.items()},
            "triplet": {m: t.to_dict() for m, t in self.triplet.items()},
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(
            default=d["default"],
            fusion=Fusion(**d["fusion"]),
            pair={m: Threshold(**t) for m, t in d["pair"].items()},
            triplet={m: Threshold(**t) for m, t in d["triplet"].items()},
            source=d["source"],
        )


def pair_signals(emb: np.ndarray, index_pairs: np.ndarray, logits: PairLogits) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity and pair-head logit for rows of (i, j) index pairs into `emb`."""
    a, b = emb[index_pairs[:, 0]], emb[index_pairs[:, 1]]
    return np.einsum("ij,ij->i", a, b), logits(a, b)


@dataclass
class EvalSets:
    """Signals of balanced pairs and "at least two of three" triplets drawn from one labelled set of embeddings."""

    cosine: np.ndarray
    logit: np.ndarray
    labels: np.ndarray
    triplet_signals: list[tuple[np.ndarray, np.ndarray]]
    triplet_labels: np.ndarray

    @classmethod
    def draw(cls, emb: np.ndarray, labels: Sequence, logits: PairLogits | None, n: int, seed: int) -> "EvalSets":
        labels = list(labels)
        logits = logits or (lambda a, b: np.zeros(len(a), np.float32))
        pairs = sample_pairs(labels, n, seed=seed)
        triplets = sample_eval_triplets(labels, n, seed=seed + 1)
        ij = np.array([s.indices for s in pairs])
        trio = np.array([s.indices for s in triplets])
        return cls(
            *pair_signals(emb, ij, logits),
            labels=np.array([s.label for s in pairs]),
            triplet_signals=[pair_signals(emb, trio[:, list(p)], logits) for p in TRIPLET_PAIRS],
            triplet_labels=np.array([s.label for s in triplets]),
        )

    def scores(self, mode: str, fusion: Fusion | None) -> tuple[np.ndarray, np.ndarray]:
        """Pair scores and best-of-three triplet scores under `mode`."""
        pair = pair_scores(mode, self.cosine, self.logit, fusion)
        trio = np.max([pair_scores(mode, c, l, fusion) for c, l in self.triplet_signals], axis=0)
        return pair, trio


def calibrate_decisions(
    emb: np.ndarray, labels: Sequence, logits: PairLogits | None, source: str, n: int = 10_000,
    target_far: float | None = None, seed: int = 0,
) -> Calibration:
    """Fit the fusion and the thresholds of every mode on balanced pairs and triplets drawn from (emb, labels).

    Without a pair head (`logits` None) only the distance mode is calibrated.
    """
    sets = EvalSets.draw(emb, labels, logits, n, seed)
    modes = MODES if logits is not None else ("distance",)
    fusion = fit_fusion(sets.cosine, sets.logit, sets.labels) if logits is not None else Fusion(0.0, 1.0, 0.0)
    pair_t, triplet_t = {}, {}
    for mode in modes:
        pair, trio = sets.scores(mode, fusion)
        pair_t[mode] = calibrate(pair, sets.labels, target_far, seed=seed)
        triplet_t[mode] = calibrate(trio, sets.triplet_labels, target_far, seed=seed)
    default = max(modes, key=lambda m: (pair_t[m].cv_accuracy, -MODES.index(m)))
    return Calibration(default, fusion, pair_t, triplet_t, source)


def evaluate_decisions(
    emb: np.ndarray, labels: Sequence, logits: PairLogits | None, calibration: Calibration,
    n: int = 10_000, seed: int = 1000,
) -> dict[str, dict[str, float]]:
    """Pair and triplet accuracy of every calibrated mode on fresh balanced sets drawn from (emb, labels)."""
    sets = EvalSets.draw(emb, labels, logits, n, seed)
    out = {}
    for mode in calibration.pair:
        pair, trio = sets.scores(mode, calibration.fusion)
        out[mode] = {
            "pair_accuracy": float(((pair >= calibration.pair[mode].value) == sets.labels.astype(bool)).mean()),
            "triplet_accuracy": float(((trio >= calibration.triplet[mode].value) == sets.triplet_labels.astype(bool)).mean()),
        }
    return out
