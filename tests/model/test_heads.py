import numpy as np
import pytest
import torch

from simengine.model.heads import EmbeddingHead, embed_numpy


def _classifier(classes=7, in_dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(classes, in_dim, generator=g), torch.randn(classes, generator=g)


def _features(n=9, in_dim=12, seed=1):
    return np.random.default_rng(seed).normal(size=(n, in_dim)).astype(np.float32)


def _normalise(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_projection_alone_is_unit_length_and_of_its_dim():
    head = EmbeddingHead(12, 5)
    e = embed_numpy(head, _features())
    assert e.shape == (9, 5) and head.dim == 5 and head.posterior_classes == 0
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-6)


def test_posteriors_join_the_projection_with_their_weight():
    weight, bias = _classifier()
    head = EmbeddingHead(12, 5, classifier=(weight, bias), head_weight=0.7)
    x = _features()
    e = embed_numpy(head, x)
    assert e.shape == (9, 5 + 7) and head.dim == 12
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    with torch.no_grad():
        projection = head.project(torch.from_numpy(x)).numpy()
    z = x @ weight.numpy().T + bias.numpy()
    posteriors = _normalise(np.exp(z - z.max(1, keepdims=True)))  # softmax, then L2: the sum cancels
    np.testing.assert_allclose(e, np.hstack([0.7 ** 0.5 * projection, 0.3 ** 0.5 * posteriors]), atol=1e-5)
    # Cosine of the joined embedding is the weighted sum of the parts' cosines.
    np.testing.assert_allclose(e @ e.T, 0.7 * projection @ projection.T + 0.3 * posteriors @ posteriors.T, atol=1e-5)


def test_classifier_is_saved_but_never_trained():
    weight, bias = _classifier()
    head = EmbeddingHead(12, 5, classifier=(weight, bias), head_weight=0.5)
    assert {"classifier_weight", "classifier_bias"} <= set(head.state_dict())
    assert all("classifier" not in name for name, _ in head.named_parameters())
    weight.add_(1.0)  # the head keeps its own copy
    assert not torch.equal(head.classifier_weight, weight)


def test_config_round_trip_rebuilds_the_same_head():
    head = EmbeddingHead(12, 5, classifier=_classifier(), head_weight=0.6)
    again = EmbeddingHead.from_config(head.config())
    again.load_state_dict(head.state_dict(), strict=True)
    x = _features()
    np.testing.assert_array_equal(embed_numpy(again, x), embed_numpy(head, x))
    assert again.config() == head.config() and head.config()["dim"] == 12


def test_config_of_a_bundle_before_posteriors_still_loads():
    old = {"in_dim": 12, "dim": 5, "hidden": 0}
    head = EmbeddingHead.from_config(old)
    assert head.dim == 5 and head.posterior_classes == 0 and head.head_weight == 1.0


@pytest.mark.parametrize("head_weight", [0.0, 1.5, -0.1])
def test_head_weight_out_of_range_is_refused(head_weight):
    with pytest.raises(ValueError, match="head_weight"):
        EmbeddingHead(12, 5, classifier=_classifier(), head_weight=head_weight)


def test_classifier_of_other_features_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        EmbeddingHead(10, 5, classifier=_classifier(in_dim=12))
