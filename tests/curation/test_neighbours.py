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


def test_beyond_the_exact_limit_the_graph_search_keeps_the_rule(monkeypatch):
    import simengine.curation.neighbours as neighbours

    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors[10] = vectors[11] = vectors[12]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sha = [str(n) for n in range(300)]
    sha[10] = sha[11] = sha[12] = "copy"
    exact, _ = nearest_others(vectors, sha, k=5)
    monkeypatch.setattr(neighbours, "EXACT_ITEMS", 0)  # HNSW from the first picture
    found, _ = neighbours.nearest_others(vectors, sha, k=5)
    assert all(n not in row for n, row in enumerate(found)) and not np.isin(found[10:13], [10, 11, 12]).any()
    assert (found == exact).mean() > 0.9  # the graph finds what the flat search finds, nearly always


def test_a_picture_indexed_three_times_is_one_neighbour():
    vectors = np.array([[1, 0], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0, 1]], np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    found, _ = nearest_others(vectors, ["a", "b", "b", "b", "c"], k=2)
    assert found[0].tolist() == [1, 4]  # "b" once (its first row), then "c"
    assert found[1].tolist() == found[2].tolist() == found[3].tolist() == [0, 4]
