from collections import Counter

import pytest

from simengine.data import evalsets as sampling
from simengine.errors import SimengineError

LABELS = [f"c{i % 5}" for i in range(100)]


def test_pairs_balanced_and_deterministic():
    pairs = sampling.sample_pairs(LABELS, 320, seed=3)
    assert len(pairs) == 320
    assert sum(p.label for p in pairs) == 160
    for p in pairs:
        a, b = p.indices
        assert (LABELS[a] == LABELS[b]) == bool(p.label)
        assert a != b
    same_classes = Counter(LABELS[p.indices[0]] for p in pairs if p.label)
    assert max(same_classes.values()) - min(same_classes.values()) <= 1
    assert pairs == sampling.sample_pairs(LABELS, 320, seed=3)
    assert pairs != sampling.sample_pairs(LABELS, 320, seed=4)


def test_eval_triplets_balanced_with_shared_pair_in_every_position():
    trips = sampling.sample_eval_triplets(LABELS, 320, seed=1)
    assert sum(t.label for t in trips) == 160
    odd_positions = Counter()
    for t in trips:
        classes = [LABELS[i] for i in t.indices]
        if t.label:
            assert len(set(classes)) == 2
            odd_positions[[classes.count(c) for c in classes].index(1)] += 1
        else:
            assert len(set(classes)) == 3
    assert set(odd_positions) == {0, 1, 2}
    assert max(odd_positions.values()) - min(odd_positions.values()) <= 1


def test_training_triplets_are_anchor_positive_negative():
    trips = sampling.sample_training_triplets(LABELS, 1280, seed=0)
    assert len(trips) == sampling.PRESETS["train"]
    for t in trips:
        a, p, n = t.indices
        assert a != p and LABELS[a] == LABELS[p] and LABELS[a] != LABELS[n]


def test_too_few_classes_is_an_error():
    with pytest.raises(SimengineError):
        sampling.sample_pairs(["a", "a", "b", "b"], 10)


@pytest.mark.parametrize("width,draw", [(2, sampling.sample_pairs), (3, sampling.sample_eval_triplets)])
def test_csv_round_trip(tmp_path, width, draw):
    paths = [tmp_path / "imgs" / f"{i}.jpg" for i in range(len(LABELS))]
    samples = draw(LABELS, 40, 0)
    out = tmp_path / "sets" / "set.csv"
    sampling.write_csv(out, samples, paths)
    header = out.read_text().splitlines()[0]
    assert header == ",".join([f"img{i + 1}" for i in range(width)] + ["label"])
    assert "../imgs/" in out.read_text()  # relative to the CSV
    rows, bad = sampling.read_csv(out, width)
    assert not bad
    assert [r.label for r in rows] == [s.label for s in samples]
    assert [tuple(p.resolve() for p in r.images) for r in rows] == [tuple(paths[i].resolve() for i in s.indices) for s in samples]


def test_csv_bad_rows_are_reported(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("img1,img2,label\na.jpg,b.jpg,1\nonly_one.jpg\na.jpg,b.jpg,maybe\nc.jpg,d.jpg\n")
    rows, bad = sampling.read_csv(path, 2)
    assert [r.line for r in rows] == [2, 5]
    assert rows[1].label is None
    assert len(bad) == 2 and ":3:" in bad[0] and ":4:" in bad[1]
