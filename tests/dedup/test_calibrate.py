"""The same-picture threshold separates copies from other photos of the same class."""

import numpy as np
import pytest

from simengine.dedup.calibrate import same_picture_threshold


def test_threshold_between_copies_and_same_class_photos():
    rng = np.random.default_rng(0)
    class_centre = rng.standard_normal(64)
    originals = class_centre + 0.8 * rng.standard_normal((100, 64))
    copies = originals + 0.1 * rng.standard_normal((100, 64))       # the same picture, edited
    negatives = class_centre + 0.8 * rng.standard_normal((100, 64))  # other photos of the class
    threshold = same_picture_threshold(originals, copies, negatives)
    assert threshold.train_accuracy >= 0.99 and threshold.cv_accuracy >= 0.95
    strict = same_picture_threshold(originals, copies, negatives, target_far=0.0)
    assert strict.value >= threshold.value - 1e-9


def test_misaligned_inputs_are_refused():
    with pytest.raises(ValueError):
        same_picture_threshold(np.ones((3, 4)), np.ones((2, 4)), np.ones((3, 4)))
