"""The same-picture decision: fitted on (copy, hard negative) signals, stored in the bundle, calibrated by training."""

import json

import numpy as np
import pytest

from simengine.dedup.calibrate import (SAME_PICTURE, PairSignals, SamePicture, fit_same_picture, read_same_picture,
                                       same_picture_file, write_same_picture)
from simengine.errors import BundleError


def signals(rng, n, backbone, layout, matches):
    return PairSignals(rng.normal(*backbone, n).clip(-1, 1), rng.normal(*layout, n).clip(-1, 1),
                       rng.poisson(matches, n))


def test_decision_separates_copies_from_hard_negatives():
    rng = np.random.default_rng(0)
    copies = signals(rng, 400, (0.9, 0.05), (0.95, 0.05), 300)
    negatives = signals(rng, 400, (0.75, 0.08), (0.5, 0.2), 4)
    decision, accuracy = fit_same_picture(copies, negatives, target_far=0.02)
    assert accuracy["far"] <= 0.02 and accuracy["frr"] <= 0.02
    assert decision.min_backbone <= decision.min_backbone_matches
    assert decision.accepts(0.95, 0.99, lambda: pytest.fail("the layout decided: keypoints not needed")) == (True, None)
    assert decision.accepts(0.95, 0.2, lambda: 500) == (True, 500)
    assert decision.accepts(0.95, 0.2, lambda: 2) == (False, 2)
    assert decision.accepts(decision.min_backbone - 0.01, 1.0, lambda: 500) == (False, None)


def test_a_stricter_rate_never_accepts_more():
    rng = np.random.default_rng(1)
    copies, negatives = signals(rng, 300, (0.9, 0.05), (0.9, 0.1), 100), signals(rng, 300, (0.8, 0.1), (0.7, 0.2), 20)
    loose, _ = fit_same_picture(copies, negatives, target_far=0.1)
    strict, _ = fit_same_picture(copies, negatives, target_far=0.0)
    assert strict.min_layout >= loose.min_layout and strict.min_matches >= loose.min_matches


def test_too_few_pairs_are_refused():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError):
        fit_same_picture(signals(rng, 1, (0.9, 0), (0.9, 0), 10), signals(rng, 5, (0.5, 0), (0.5, 0), 1))


def test_stored_with_the_bundle_and_corruption_is_an_error(tmp_path):
    assert read_same_picture(tmp_path) is None
    decision = SamePicture(0.68, 0.93, 0.76, 37)
    write_same_picture(tmp_path, same_picture_file(decision, {"accuracy": {}}, "test"))
    assert read_same_picture(tmp_path)[0] == decision
    (tmp_path / SAME_PICTURE).write_text(json.dumps({"decision": {"min_backbone": "x"}}))
    with pytest.raises(BundleError):
        read_same_picture(tmp_path)


def test_training_calibrates_the_decision(bundle_dir):
    decision, record = read_same_picture(bundle_dir)
    assert read_same_picture(bundle_dir / "general")[0] == decision  # the twin shares the backbone, so the decision
    assert 0 < decision.min_backbone <= decision.min_backbone_matches <= 1 and decision.min_matches >= 8
    assert record["copies"] >= 2 and set(record["copies_by_transform"]) <= {
        "resize", "jpeg", "crop", "rotate", "colour", "text", "format", "thumbnail"}
