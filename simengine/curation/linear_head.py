"""Out-of-fold label probabilities from a linear head: a softmax regression on the items' vectors, trained on the
other folds only, so that no item's own label is learned where it is judged (a head that saw it would memorise it,
errors included). L2-regularised as scikit-learn's default (C = 1), fitted by L-BFGS; each fold learns from at most
`SAMPLE` items, so that a million items cost a bounded fit and one pass of predictions."""

from __future__ import annotations

import numpy as np

FOLDS = 5
SAMPLE = 50_000
ITERATIONS = 100


def out_of_fold_probabilities(vectors: np.ndarray, codes: np.ndarray, n_labels: int, folds: int = FOLDS,
                              seed: int = 0) -> np.ndarray:
    """(items, labels) probabilities for every labelled row (code >= 0), each from a head fitted without its fold;
    unlabelled rows get a uniform row. Folds are drawn per label, so each fold holds every label in proportion."""
    rng = np.random.default_rng(seed)
    fold = np.full(len(codes), -1)
    for code in range(n_labels):
        rows = rng.permutation(np.flatnonzero(codes == code))
        fold[rows] = np.arange(len(rows)) % folds
    out = np.full((len(codes), n_labels), 1.0 / n_labels, np.float32)
    for f in range(folds):
        learn = np.flatnonzero((fold >= 0) & (fold != f))
        if len(learn) > SAMPLE:
            learn = np.sort(rng.choice(learn, SAMPLE, replace=False))
        judged = np.flatnonzero(fold == f)
        if len(judged) and len(learn):
            out[judged] = _fit_and_predict(vectors[learn], codes[learn], n_labels, vectors[judged])
    return out


def _fit_and_predict(x: np.ndarray, y: np.ndarray, n_labels: int, new: np.ndarray) -> np.ndarray:
    import torch

    xs, ys = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(y.astype(np.int64))
    weight = torch.zeros(x.shape[1], n_labels, requires_grad=True)
    bias = torch.zeros(n_labels, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=ITERATIONS, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        # sklearn's objective divided by n: the mean cross-entropy plus 0.5 ||W||² / n (C = 1)
        value = torch.nn.functional.cross_entropy(xs @ weight + bias, ys) + 0.5 * (weight ** 2).sum() / len(ys)
        value.backward()
        return value

    optimiser.step(loss)
    with torch.no_grad():
        return torch.softmax(torch.from_numpy(np.ascontiguousarray(new, np.float32)) @ weight + bias, 1).numpy()
