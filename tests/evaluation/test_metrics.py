import numpy as np
import pytest

from simengine.evaluation import metrics as evaluation


def test_retrieval_metrics_on_a_hand_made_gallery():
    gallery = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    labels = ["a", "a", "b", "b"]
    query = np.array([[1, 0.05], [0.6, 0.4]], np.float32)  # the second ranks a, a, b, b but is labelled b
    m = evaluation.retrieval_metrics(query, ["a", "b"], gallery, labels, knn=1)
    assert m["precision_at_1"] == 0.5
    # query 1: R=2, both a's first -> AP 1.0; query 2: R=2, top-2 are a's -> 0
    assert m["map_at_r"] == pytest.approx(0.5)
    assert m["r_precision"] == pytest.approx(0.5)
    assert m["knn1_accuracy"] == 0.5


def test_map_at_r_partial_credit():
    gallery = np.array([[1, 0], [0.8, 0.6], [0.9, 0.4], [0, 1]], np.float32)
    m = evaluation.retrieval_metrics(np.array([[1, 0]], np.float32), ["a"], gallery, ["a", "b", "a", "a"])
    # ranking: 0(a) 2(a) 1(b) 3(a); R=3: hits 1,1,0 -> (1 + 1 + 0) / 3
    assert m["map_at_r"] == pytest.approx(2 / 3)
    assert m["r_precision"] == pytest.approx(2 / 3)


def test_exclude_self():
    x = np.eye(3, dtype=np.float32) + 0.01
    m = evaluation.retrieval_metrics(x, ["a", "b", "c"], x, ["a", "b", "c"], exclude_self=True)
    assert m["precision_at_1"] == 0.0


def test_classification_report():
    rep = evaluation.classification_report([1, 1, 0, 0, 1], [1, 0, 0, 0, 1])
    assert rep["accuracy"] == 0.8
    assert rep["1"]["precision"] == pytest.approx(2 / 3) and rep["1"]["recall"] == 1.0
    assert rep["0"]["support"] == 3


def test_wilson_interval_contains_p():
    lo, hi = evaluation.wilson_interval(90, 100)
    assert lo < 0.9 < hi and hi - lo < 0.13
