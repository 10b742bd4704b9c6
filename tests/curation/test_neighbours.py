"""The out-of-sample neighbourhood: never the item itself, never a copy of it."""

import numpy as np

from simengine.curation.neighbours import nearest_others


def test_an_item_and_its_copies_are_never_its_neighbours():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 8)).astype(np.float32)
    vectors[1] = vectors[0]  # a copy: the same content
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sha = ["a", "a", "b", "c", "d", "e"]
    found, cosines = nearest_others(vectors, sha, k=3)
    assert found.shape == (6, 3) and not np.isin(found[0], [0, 1]).any() and not np.isin(found[1], [0, 1]).any()
    assert all(n not in row for n, row in enumerate(found))
    assert np.all(np.diff(cosines, axis=1) <= 1e-6)  # best first


def test_fewer_others_than_k_are_padded():
    vectors = np.eye(3, dtype=np.float32)
    found, cosines = nearest_others(vectors, ["a", "b", "c"], k=4)
    assert (found[:, 2:] == -1).all() and np.isnan(cosines[:, 2:]).all() and (found[:, :2] >= 0).all()
