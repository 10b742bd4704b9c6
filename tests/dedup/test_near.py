"""Near-duplicate pairs by k-NN search above a threshold, within one set or against another."""

import numpy as np

from simengine.dedup.near import near_pairs


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_pairs_above_the_threshold_once_each():
    rng = np.random.default_rng(0)
    base = unit(rng.standard_normal((200, 32)))
    copies = unit(base[:20] + 0.05 * rng.standard_normal((20, 32)))
    vectors = np.vstack([base, copies])
    ids = np.arange(220) + 1000
    pairs = list(near_pairs(vectors, ids, threshold=0.9))
    assert sorted((a, b) for a, b, _ in pairs) == [(1000 + i, 1200 + i) for i in range(20)]
    assert all(s >= 0.9 for _, _, s in pairs)


def test_against_another_set_and_empty_sets():
    rng = np.random.default_rng(1)
    catalogue = unit(rng.standard_normal((100, 16)))
    batch = unit(np.vstack([catalogue[[3, 7]] + 0.02 * rng.standard_normal((2, 16)), rng.standard_normal((5, 16))]))
    pairs = list(near_pairs(batch, np.arange(7), 0.9, against=(catalogue, np.arange(100) + 500)))
    assert sorted((a, b) for a, b, _ in pairs) == [(0, 503), (1, 507)]
    assert list(near_pairs(batch[:0], np.arange(0), 0.9)) == []


def test_a_pair_found_from_one_side_only_is_kept():
    # Ten close copies crowd each other's 3 nearest, so none of them lists the farther copy 10; only 10's own search
    # finds its pairs, from the larger id's side.
    rng = np.random.default_rng(2)
    centre = rng.standard_normal(32)
    crowd = unit(centre + 0.01 * rng.standard_normal((10, 32)))
    far_copy = unit(centre + 0.2 * rng.standard_normal((1, 32)))
    vectors = np.vstack([crowd, far_copy])
    pairs = {(a, b) for a, b, _ in near_pairs(vectors, np.arange(11), threshold=0.5, k=3)}
    assert any(b == 10 for _, b in pairs)
    assert all(a < b for a, b in pairs) and len(pairs) == len(set(pairs))
