"""The general twin of a bundle: the backbone's own features as the embedding, for collections unlike the classes
the bundle was trained on.

A triplet head trained on a few classes maps images of other classes onto those few: on the unseen half of
Imagenette it is 0.17 below the raw backbone in pair accuracy (benchmarks/results/unseen_classes.md). Every bundle
therefore carries a twin in `general/` (the L2-normalised backbone features, a pair head, thresholds on the cosine)
and the centroids of its training classes. A collection whose images mostly lie farther from every training class
than the training holdout does is indexed with the twin (labels or not: they only calibrate), so the model does not
make such a collection worse than the backbone alone.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simengine.evaluation.metrics import normalise

log = logging.getLogger(__name__)

GENERAL_DIR = "general"
CENTROIDS = "training_centroids.npy"
# An image is unlike the training classes when its similarity to the nearest class centroid is below what this
# share of the training holdout reaches; a collection is, when most of its images are.
HOLDOUT_QUANTILE = 0.05
UNLIKE_SHARE = 0.5
CHOICE_SAMPLE = 5000  # images looked at to choose; the share's standard error is then at most 0.7 %


def nearest_centroid_similarity(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cosine similarity of each image's backbone features to the nearest training-class centroid."""
    return (normalise(features) @ normalise(centroids).T).max(axis=1)


def training_centroids(features: np.ndarray, labels: np.ndarray, holdout: np.ndarray) -> tuple[np.ndarray, float]:
    """One centroid per training class (mean of the normalised features of its non-holdout images), and the
    similarity to the nearest centroid that all but HOLDOUT_QUANTILE of the holdout images reach."""
    labels = np.asarray(labels)
    fit = np.ones(len(labels), bool)
    fit[holdout] = False
    classes = sorted(set(labels[fit].tolist()))
    centroids = np.stack([normalise(features[fit & (labels == c)]).mean(axis=0) for c in classes])
    threshold = float(np.quantile(nearest_centroid_similarity(features[holdout], centroids), HOLDOUT_QUANTILE))
    return centroids.astype(np.float32), threshold


def centroids_file(centroids: np.ndarray, threshold: float) -> bytes:
    """The .npy a bundle keeps: the centroids, then a row holding the threshold in its first cell."""
    last = np.zeros((1, centroids.shape[1]), np.float32)
    last[0, 0] = threshold
    buffer = io.BytesIO()
    np.save(buffer, np.vstack([centroids, last]).astype(np.float32))
    return buffer.getvalue()


def unlike_share(features: np.ndarray, centroids: np.ndarray, threshold: float) -> float:
    """Share of images (backbone features) farther from every training class than the holdout's threshold."""
    return float((nearest_centroid_similarity(features, centroids) < threshold).mean())


def has_twin(bundle_dir: str | Path) -> bool:
    """Whether the bundle carries a general twin and the centroids to choose it by."""
    return (Path(bundle_dir) / CENTROIDS).is_file() and (Path(bundle_dir) / GENERAL_DIR).is_dir()


def unlike_training_share(bundle_dir: str | Path, features: np.ndarray) -> float | None:
    """`unlike_share` against a bundle's training classes, or None when it keeps no centroids."""
    from simengine.errors import BundleError

    path = Path(bundle_dir) / CENTROIDS
    if not path.is_file() or len(features) == 0:
        return None
    try:
        stored = np.load(path)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable ({exc}); train the model again") from None
    if stored.ndim != 2 or stored.shape[0] < 2 or stored.shape[1] != features.shape[1]:
        raise BundleError(f"{path}: centroids of shape {stored.shape} do not fit {features.shape[1]}-d features")
    return unlike_share(features, stored[:-1], float(stored[-1, 0]))


def choose_bundle(bundle_dir: str | Path, features: Callable[[], np.ndarray]) -> tuple[Path, dict[str, Any]]:
    """The bundle to index a collection with: the twin when most of its images (their backbone `features`, computed
    only when there is a twin to choose) are unlike the training classes, else the bundle itself; and what was
    measured, for the index's build record."""
    from simengine.model.bundle import read_config

    bundle_dir = Path(bundle_dir)
    if read_config(bundle_dir).get("general"):
        return bundle_dir, {"embedding": "general", "reason": "the bundle given is a general twin"}
    twin = bundle_dir / GENERAL_DIR
    share = unlike_training_share(bundle_dir, features()) if has_twin(bundle_dir) else None
    if share is None:
        return bundle_dir, {"embedding": "trained", "reason": "the bundle has no general twin"}
    choice = {"unlike_training_share": round(share, 4), "threshold_share": UNLIKE_SHARE}
    if share >= UNLIKE_SHARE:
        log.warning("%.0f%% of the collection is unlike the classes the model was trained on: indexing it with the "
                    "features of the model's backbone (%s)", 100 * share, twin)
        return twin, choice | {"embedding": "general"}
    return bundle_dir, choice | {"embedding": "trained"}
