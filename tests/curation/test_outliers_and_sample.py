"""Outliers ranked by distance to their nearest others; a representative sample that covers every label."""

import shutil

import numpy as np
import pytest

from simengine.curation.outliers import find_outliers, outlier_scores
from simengine.curation.sample import representative_sample, shares


def test_an_item_far_from_the_rest_ranks_first_within_its_label_too():
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)
    vectors = np.concatenate([centres[0] + 0.1 * rng.normal(size=(15, 8)), centres[1] + 0.1 * rng.normal(size=(15, 8))])
    vectors[3] = centres[1] + 0.1 * rng.normal(size=8)  # labelled with the first group, lies in the second
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    sha = [str(n) for n in range(30)]
    groups = ["a"] * 15 + ["b"] * 15
    overall, _, _ = outlier_scores(vectors, sha, k=5)
    within, neighbours, _ = outlier_scores(vectors, sha, k=5, groups=groups)
    assert int(np.argmax(within)) == 3 and all(groups[m] == "a" for m in neighbours[3])
    assert overall[3] < within[3]  # among everything it has near neighbours


def test_an_odd_photo_in_a_folder_of_one_kind_is_the_top_outlier(fixture_data, model, tmp_path):
    from simengine.index.build import build_index

    folder = tmp_path / "photos"
    shutil.copytree(fixture_data / "train" / "coffee", folder)
    shutil.copy(fixture_data / "train" / "rocket" / "rocket_00.jpg", folder / "odd.jpg")
    index, _, _ = build_index(folder, model, tmp_path / "index")
    report = find_outliers(index, k=3, top=3)
    assert report.outliers[0].path == str(folder / "odd.jpg") and len(report.outliers) == 3
    assert report.outliers[0].score > report.outliers[1].score


@pytest.mark.parametrize("counts, n, expected", [
    ([10, 10], 4, [2, 2]), ([90, 5, 5], 10, [8, 1, 1]), ([1, 1, 100], 2, [0, 0, 2]), ([3, 2], 10, [3, 2]),
    ([5, 5, 5], 3, [1, 1, 1]),
])
def test_shares_are_proportional_and_cover_small_labels(counts, n, expected):
    assert shares(counts, n) == expected


def test_a_sample_per_label_takes_each_labels_share(built_index):
    report = representative_sample(built_index, 8)
    assert report.per_label and len(report.sample) == 8
    labels = [r.label for r in report.sample]
    assert {label: labels.count(label) for label in labels} == {"astronaut": 2, "chelsea": 2, "coffee": 2,
                                                               "rocket": 2}
    assert sum(r.represents for r in report.sample) == 32 and len({r.id for r in report.sample}) == 8
    whole = representative_sample(built_index, 40, per_label=False)
    assert len(whole.sample) == 32  # asked for more than there are: every item
