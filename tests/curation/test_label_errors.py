"""Label errors: out of sample (an item's own label and its copies never vote), ranked, explained."""

import numpy as np
import pytest

from simengine.curation.label_errors import find_label_errors, judge_labels, label_weights
from simengine.errors import SimengineError


def clusters(rng, sizes, dim=16, spread=0.15):
    centres = np.eye(dim, dtype=np.float32)[: len(sizes)]
    vectors = np.concatenate([c + spread * rng.normal(size=(n, dim)) for c, n in zip(centres, sizes)])
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_a_planted_error_is_found_first_with_the_label_it_looks_like():
    rng = np.random.default_rng(0)
    vectors = clusters(rng, [20, 20, 20])
    labels = ["a"] * 20 + ["b"] * 20 + ["c"] * 20
    labels[5] = "c"  # an "a" image labelled "c"
    for head in (False, True):  # the vote alone, and with the cross-validated head
        judged = judge_labels(vectors, labels, [str(n) for n in range(60)], k=10, head=head)
        assert judged.flagged.tolist() == [5] and judged.names[int(np.argmax(judged.weights[5]))] == "a"


def test_copies_of_an_item_never_vouch_for_its_label():
    """Two copies of one "a" image, both labelled "c": were copies neighbours, each would vote "c" for the other
    with cosine 1 and hide the error."""
    rng = np.random.default_rng(1)
    vectors = clusters(rng, [20, 20, 20])
    labels = ["a"] * 20 + ["b"] * 20 + ["c"] * 20
    vectors[6] = vectors[5]
    labels[5] = labels[6] = "c"
    sha = [str(n) for n in range(60)]
    sha[6] = sha[5]
    judged = judge_labels(vectors, labels, sha, k=5, head=False)
    assert judged.margin[5] < -0.5 and judged.margin[6] < -0.5


def test_an_items_own_label_has_no_vote():
    """Every neighbour of row 0 is labelled b: its own label gets only the prior's share."""
    neighbours = np.array([[1, 2], [0, 2], [0, 1]])
    cosines = np.ones((3, 2), np.float32)
    weights = label_weights(neighbours, cosines, np.array([0, 1, 1]), 2, prior=0.5)
    assert weights[0, 0] == pytest.approx(0.25 / 2.5) and weights[0, 1] == pytest.approx(2.25 / 2.5)


def test_an_unlabelled_collection_is_refused():
    with pytest.raises(SimengineError, match="at least 2 labels"):
        judge_labels(np.eye(3, dtype=np.float32), [None, None, "a"], ["a", "b", "c"])


def test_on_an_index_of_photos_the_planted_error_ranks_first(fixture_data, model, tmp_path):
    """32 photos of 4 kinds in a table, one coffee photo labelled rocket: it ranks first, looks like coffee, and
    the neighbours that disagree are coffee photos."""
    from simengine.index.build import build_index

    photos = sorted((fixture_data / "train").glob("*/*.jpg"))
    planted = next(p for p in photos if p.parent.name == "coffee")
    table = tmp_path / "labels.csv"
    table.write_text("path,label\n" + "".join(
        f"{p},{'rocket' if p == planted else p.parent.name}\n" for p in photos))
    index, _, _ = build_index(table, model, tmp_path / "index")
    report = find_label_errors(index, k=5)
    first = report.issues[0]
    assert first.path == str(planted) and first.label == "rocket" and first.suggested == "coffee"
    assert first.evidence and all(e["label"] == "coffee" for e in first.evidence)
    assert report.labelled == 32 and report.to_dict()["flagged"] == len(report.issues)


def test_a_model_trained_on_the_indexs_own_images_is_said_to_hide_errors(built_index, fixture_data):
    """The fixture index holds the very images its model was trained on."""
    report = find_label_errors(built_index, k=5)
    assert report.warning and "trained on" in report.warning


def test_a_label_only_the_item_has_gets_only_the_priors_share():
    """k covers every other item: were the item its own neighbour, its unique label would get its cosine of 1."""
    from simengine.curation.label_errors import PRIOR

    rng = np.random.default_rng(3)
    vectors = clusters(rng, [6, 6])
    labels = ["a"] * 6 + ["b"] * 5 + ["z"]
    judged = judge_labels(vectors, labels, [str(n) for n in range(12)], k=11, head=False)
    votes = np.clip(judged.cosines[11], 0, None).sum()
    assert judged.weights[11, judged.names.index("z")] == pytest.approx(PRIOR / 3 / (votes + PRIOR), rel=1e-5)
    assert judged.margin[11] < 0 and 11 not in judged.neighbours[11]


def test_the_head_never_judges_a_label_it_learned():
    """A label whose only item is the one judged: a head that had learned it would give it weight; out of fold it
    can only get the share of a label it never saw."""
    from simengine.curation.linear_head import out_of_fold_probabilities

    rng = np.random.default_rng(4)
    vectors = clusters(rng, [30, 30])
    codes = np.array([0] * 30 + [1] * 29 + [2])
    probabilities = out_of_fold_probabilities(vectors, codes, 3)
    assert probabilities[59, 2] < 0.05 and probabilities[:30, 0].mean() > 0.8
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
