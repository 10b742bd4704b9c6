"""PKSampler: endless batches of P classes x K items each; a class with fewer than K items repeats its own items."""

from collections import Counter
from itertools import islice

import numpy as np
import pytest

from simengine.training.pk_sampler import PKSampler


def take(sampler, n):
    return [batch.tolist() for batch in islice(iter(sampler), n)]


def by_class(batch, labels):
    """The batch's indices grouped by their label, in the order drawn."""
    groups = {}
    for i in batch:
        groups.setdefault(labels[i], []).append(i)
    return groups


def test_each_batch_is_p_distinct_classes_of_k_distinct_items():
    # Interleaved labels, so a sampler that ignored labels (contiguous slices, say) would mix classes.
    labels = [f"c{i % 5}" for i in range(30)]  # 5 classes of 6 items
    batches = take(PKSampler(labels, p=3, k=4, seed=0), 50)
    assert len(batches) == 50
    for batch in batches:
        assert len(batch) == 3 * 4
        assert all(isinstance(i, int) and 0 <= i < len(labels) for i in batch)
        counts = Counter(labels[i] for i in batch)
        assert len(counts) == 3 and set(counts.values()) == {4}
        # Every class has at least K items, so none repeats within a batch.
        assert len(set(batch)) == len(batch)
    # Over 50 batches every class and every item is drawn, not a fixed subset.
    drawn = {i for batch in batches for i in batch}
    assert drawn == set(range(len(labels)))


def test_classes_smaller_than_k_repeat_their_own_items_only():
    sizes = {"one": 1, "two": 2, "five": 5, "seven": 7}
    labels = [name for name, n in sizes.items() for _ in range(n)]
    groups = {name: {i for i, label in enumerate(labels) if label == name} for name in sizes}
    k = 4
    # p equals the number of classes, so every batch holds every class, the small ones included.
    for batch in take(PKSampler(labels, p=4, k=k, seed=3), 40):
        drawn = by_class(batch, labels)
        assert set(drawn) == set(sizes)
        for name, ix in drawn.items():
            assert len(ix) == k and set(ix) <= groups[name]
            if sizes[name] >= k:
                assert len(set(ix)) == k  # drawn without replacement
            else:
                assert len(set(ix)) < k  # necessarily repeats, within its own class
    assert by_class(take(PKSampler(labels, p=4, k=k, seed=3), 1)[0], labels)["one"] == [0, 0, 0, 0]


def test_small_classes_use_all_their_items_over_time():
    labels = ["a", "a", "a", "b", "b", "b", "b", "b", "b"]
    seen = set()
    for batch in take(PKSampler(labels, p=2, k=5, seed=1), 30):
        seen.update(by_class(batch, labels)["a"])
    assert seen == {0, 1, 2}


def test_p_beyond_the_number_of_classes_takes_every_class_once():
    labels = [0, 0, 1, 1, 2, 2, 2]
    for batch in take(PKSampler(labels, p=10, k=2, seed=0), 20):
        assert len(batch) == 3 * 2
        assert Counter(labels[i] for i in batch) == {0: 2, 1: 2, 2: 2}


def test_a_seed_fixes_the_batches():
    labels = [f"c{i % 6}" for i in range(48)]
    first = take(PKSampler(labels, p=3, k=3, seed=7), 25)
    assert take(PKSampler(labels, p=3, k=3, seed=7), 25) == first
    assert take(PKSampler(labels, p=3, k=3, seed=8), 25) != first
    # The training code passes list(numpy labels): the same labels as an array give the same batches.
    assert take(PKSampler(np.array(labels), p=3, k=3, seed=7), 25) == first


def test_batches_never_run_out():
    """No epochs: the sampler is endless, so it has no length and keeps going well past one pass over the data."""
    labels = [i % 4 for i in range(20)]
    sampler = PKSampler(labels, p=2, k=2, seed=0)
    with pytest.raises(TypeError):
        len(sampler)
    batches = take(sampler, 500)  # 100 passes' worth of items
    assert len(batches) == 500 and all(len(b) == 4 for b in batches)
    assert {i for b in batches for i in b} == set(range(20))


@pytest.mark.parametrize("labels", [[], ["only"] * 5])
def test_fewer_than_two_classes_are_rejected(labels):
    with pytest.raises(ValueError, match="at least two classes"):
        PKSampler(labels, p=2, k=2)


def test_two_classes_are_enough():
    [batch] = take(PKSampler(["x", "y"], p=2, k=3, seed=0), 1)
    assert sorted(batch) == [0, 0, 0, 1, 1, 1]
