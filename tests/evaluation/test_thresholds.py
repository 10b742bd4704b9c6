import numpy as np
import pytest

from simengine.evaluation import thresholds as calibration


def test_known_best_threshold():
    scores = [0.95, 0.9, 0.8, 0.7, 0.65, 0.4, 0.3, 0.1]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    value, acc = calibration.best_accuracy_threshold(scores, labels)
    assert acc == 1.0
    assert 0.65 < value <= 0.7


def test_threshold_with_an_unavoidable_error():
    scores = [0.9, 0.8, 0.6, 0.5, 0.3, 0.2]
    labels = [1, 1, 0, 1, 0, 0]
    value, acc = calibration.best_accuracy_threshold(scores, labels)
    assert acc == pytest.approx(5 / 6)
    assert ((np.array(scores) >= value) == np.array(labels, bool)).mean() == pytest.approx(acc)


def test_ties_are_kept_together():
    value, acc = calibration.best_accuracy_threshold([0.5, 0.5, 0.5, 0.1], [1, 0, 1, 0])
    assert acc == 0.75 and 0.1 < value <= 0.5


def test_target_far_is_respected():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(1, 0.5, 2000), rng.normal(-1, 0.5, 2000)]
    labels = np.r_[np.ones(2000), np.zeros(2000)]
    value, _ = calibration.far_threshold(scores, labels, 0.001)
    far = ((scores >= value) & (labels == 0)).sum() / 2000
    assert far <= 0.001
    best, _ = calibration.best_accuracy_threshold(scores, labels)
    assert value > best


def test_cross_validated_accuracy_is_close_to_training_accuracy():
    rng = np.random.default_rng(1)
    scores = np.r_[rng.normal(1, 0.7, 1000), rng.normal(-1, 0.7, 1000)]
    labels = np.r_[np.ones(1000), np.zeros(1000)]
    t = calibration.calibrate(scores, labels)
    assert t.mode == "accuracy"
    assert abs(t.cv_accuracy - t.train_accuracy) < 0.02
    assert 0.05 < t.far < 0.15 and 0.05 < t.frr < 0.15


def test_the_roc_curve_runs_from_nothing_to_everything_accepting_ties_together():
    fpr, tpr = calibration.roc_curve([0.9, 0.8, 0.8, 0.1], [1, 1, 0, 0])
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1]  # the tied pair moves both at once


def test_the_balanced_rule_ignores_how_many_of_each_answer_were_labelled():
    rng = np.random.default_rng(3)
    same, different = rng.normal(0.8, 0.1, 10), rng.normal(0.4, 0.1, 90)
    scores, labels = np.r_[same, different], np.r_[np.ones(10), np.zeros(90)]
    balanced, _ = calibration.best_accuracy_threshold(np.r_[same, different[:10]], np.r_[np.ones(10), np.zeros(10)],
                                                      balanced=True)
    skewed_plain, _ = calibration.best_accuracy_threshold(scores, labels)
    skewed_balanced, accuracy = calibration.best_accuracy_threshold(scores, labels, balanced=True)
    # Plain accuracy on 90 % "different" pushes the threshold up to reject; the balanced one stays in the gap.
    assert skewed_plain >= skewed_balanced
    assert abs(skewed_balanced - balanced) < abs(skewed_plain - balanced) + 1e-9
    assert 0.5 < accuracy <= 1.0


def test_bootstrap_calibration_keeps_its_interval_and_count():
    rng = np.random.default_rng(4)
    scores = np.r_[rng.normal(0.7, 0.15, 25), rng.normal(0.3, 0.15, 25)]
    labels = np.r_[np.ones(25), np.zeros(25)]
    t = calibration.calibrate(scores, labels, bootstrap=200)
    assert t.examples == 50
    lo, hi = t.interval
    assert lo <= t.value <= hi and hi - lo > 0.01  # 50 noisy scores leave a real spread
    assert calibration.calibrate(scores, labels).interval is None
    again = calibration.calibrate(scores, labels, bootstrap=200)
    assert again == t  # seeded


def test_bagged_thresholds_vary_less_between_small_samples_than_single_sweeps():
    def spread(bootstrap: int) -> float:
        values = []
        for seed in range(30):
            rng = np.random.default_rng(100 + seed)
            scores = np.r_[rng.normal(0.6, 0.2, 10), rng.normal(0.4, 0.2, 10)]
            values.append(calibration.calibrate(scores, np.r_[np.ones(10), np.zeros(10)], bootstrap=bootstrap,
                                                folds=2).value)
        return float(np.std(values))

    assert spread(100) < spread(0)
