"""Retrieval and verification metrics, defined exactly (precision@1, R-precision, MAP@R, kNN vote, pair/triplet accuracy)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def retrieval_metrics(
    queries: np.ndarray, query_labels: Sequence, gallery: np.ndarray, gallery_labels: Sequence,
    knn: int = 10, exclude_self: bool = False, chunk: int = 512,
) -> dict[str, float]:
    """Queries against a gallery by inner product on L2-normalised rows.

    R for a query is the number of gallery items of its class, so MAP@R looks at every one of them
    (the pytorch-metric-learning definition). With `exclude_self`, query i is gallery item i and is left out.
    """
    q_labels, g_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    classes, g_codes = np.unique(g_labels, return_inverse=True)
    code_of = {c: i for i, c in enumerate(classes)}
    q_codes = np.array([code_of.get(label, -1) for label in q_labels])
    counts = np.bincount(g_codes, minlength=len(classes))
    q, g = normalise(queries), normalise(gallery)
    p1, rp, mapr, vote = [], [], [], []
    for start in range(0, len(q), chunk):
        sims = q[start:start + chunk] @ g.T
        if exclude_self:
            rows = np.arange(sims.shape[0])
            sims[rows, start + rows] = -np.inf
        order = np.argsort(-sims, axis=1, kind="stable")
        for row, q_code in enumerate(q_codes[start:start + chunk]):
            r = int(counts[q_code]) - int(exclude_self) if q_code >= 0 else 0
            hits = g_codes[order[row]] == q_code
            p1.append(float(hits[0]))
            neighbours = np.bincount(g_codes[order[row, :knn]], minlength=len(classes))
            vote.append(float(neighbours.argmax() == q_code))
            if r <= 0:
                rp.append(0.0)
                mapr.append(0.0)
                continue
            top = hits[:r]
            rp.append(float(top.mean()))
            precision_at_i = np.cumsum(top) / np.arange(1, r + 1)
            mapr.append(float((precision_at_i * top).sum() / r))
    return {
        "precision_at_1": float(np.mean(p1)),
        "r_precision": float(np.mean(rp)),
        "map_at_r": float(np.mean(mapr)),
        f"knn{knn}_accuracy": float(np.mean(vote)),
    }


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine of each row of `a` with the same row of `b`."""
    return (normalise(a) * normalise(b)).sum(axis=1)


def accuracy(predicted: Sequence[bool], labels: Sequence[int]) -> float:
    return float(np.mean(np.asarray(predicted, bool) == np.asarray(labels, bool)))


def classification_report(predicted: Sequence[bool], labels: Sequence[int]) -> dict:
    """Accuracy plus precision, recall, F1 and support for each label (0 and 1), as a JSON-ready dict."""
    pred, true = np.asarray(predicted, bool), np.asarray(labels, bool)
    report: dict = {"accuracy": accuracy(pred, true), "n": int(len(true))}
    for name, positive in (("0", False), ("1", True)):
        tp = int(((pred == positive) & (true == positive)).sum())
        predicted_n, support = int((pred == positive).sum()), int((true == positive).sum())
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return report


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(centre - half), float(centre + half)
