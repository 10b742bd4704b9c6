"""The map: a 2-D projection that keeps groups apart, computed once per index version and kept in the index."""

import numpy as np

from simengine.curation.projection import index_map, map_file, project


def clusters(n_per: int, dim: int = 64, groups: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim))
    labels = np.repeat(np.arange(groups), n_per)
    vectors = centres[labels] + 0.15 * rng.normal(size=(len(labels), dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


def test_groups_stay_apart_in_the_unit_square():
    vectors, labels = clusters(40)
    xy, method = project(vectors)
    assert method.startswith("t-SNE") and xy.shape == (160, 2) and xy.dtype == np.float32
    assert xy.min() == 0 and xy.max() == 1
    nearest = np.argsort(((xy[:, None] - xy[None]) ** 2).sum(-1), axis=1)[:, 1:6]
    assert (labels[nearest] == labels[:, None]).mean() > 0.95  # each point's 5 nearest on the map share its group


def test_a_handful_of_points_is_mapped_by_pca():
    vectors, _ = clusters(2)
    xy, method = project(vectors)
    assert method == "pca" and xy.shape == (8, 2) and np.isfinite(xy).all()
    assert project(clusters(3)[0])[1].startswith("t-SNE (openTSNE, perplexity 3.66667")  # 12 points: a smaller one


def test_the_map_is_kept_per_version_inside_the_index(index_copy, val):
    from simengine.index.update import add_images

    first = index_map(index_copy)
    stored = map_file(index_copy, first.version)
    assert stored.is_file() and len(first.ids) == len(set(first.ids.tolist())) and len(first.ids) == len(first.xy)
    again = index_map(index_copy)
    assert np.array_equal(again.xy, first.xy) and again.method == first.method  # read back, not recomputed
    add_images(index_copy, [val["coffee"][0]])
    newer = index_map(index_copy)
    assert newer.version == first.version + 1 and len(newer.ids) == len(first.ids) + 1
    assert sorted(p.name for p in stored.parent.iterdir()) == [f"v{newer.version}.npz"]  # the old one removed
    body = newer.to_dict()
    assert len(body["x"]) == len(body["ids"]) and all(0 <= v <= 1 for v in body["x"] + body["y"])


def test_an_index_where_the_map_cannot_be_written_still_gets_it(index_copy, caplog):
    (index_copy / "maps").write_text("in the way")  # as a read-only index would refuse, for root too
    found = index_map(index_copy)
    assert found.ids.size and "is not kept" in caplog.text
    assert (index_copy / "maps").read_text() == "in the way"
