"""The index type from size and memory budget: the most exact type whose estimate fits, as autofaiss chooses."""

import numpy as np
import pytest

from simengine.errors import SimengineError
from simengine.store import faiss_factory, index_choice
from simengine.store.index_choice import choose, parse_memory

G = 2**30


def test_memory_sizes_read_as_people_write_them():
    assert parse_memory("4G") == 4 * G and parse_memory("512M") == 512 * 2**20 and parse_memory("1.5GB") == int(1.5 * G)
    assert parse_memory("2000000") == 2_000_000 and parse_memory("3 GiB") == 3 * G
    for bad in ("four gigs", "-1G", "4X", ""):
        with pytest.raises(SimengineError, match="memory size"):
            parse_memory(bad)


def test_without_a_budget_the_size_rule_holds():
    assert choose(99_999, 256).kind == "flat" and choose(100_000, 256).kind == "hnsw"
    assert choose(10, 256, "ivf_sq8").kind == "ivf_sq8"
    with pytest.raises(SimengineError, match="unknown index type"):
        choose(10, 256, "lsh")


@pytest.mark.parametrize("n, budget, kind", [
    (50_000, 4 * G, "flat"),
    (500_000, 2 * G, "hnsw"),          # 0.65 GiB as HNSW
    (500_000, 0.6 * G, "ivf"),         # too big for HNSW, IVF-Flat fits
    (10_000_000, 20 * G, "ivf"),       # 10.1 GiB of exact vectors: HNSW would not build in reasonable time
    (10_000_000, 4 * G, "ivf_sq8"),    # 2.9 GiB of 8-bit codes
    (10_000_000, 1.3 * G, "ivf_pq"),   # 64-byte PQ codes
])
def test_the_most_exact_type_that_fits_is_chosen(n, budget, kind):
    chosen = choose(n, 256, "auto", int(budget))
    assert chosen.kind == kind and chosen.memory(n) <= budget
    if kind in index_choice.TRAINED_TYPES:
        assert chosen.nlist & (chosen.nlist - 1) == 0 and n // chosen.nlist >= index_choice.TRAIN_POINTS_PER_LIST


def test_pq_codes_shrink_to_the_budget_and_below_the_smallest_the_error_names_what_is_needed():
    bigger, smaller = choose(10_000_000, 256, "auto", int(1.3 * G)), choose(10_000_000, 256, "auto", int(0.9 * G))
    assert "PQ64x8" in bigger.factory and "PQ32x8" in smaller.factory
    with pytest.raises(SimengineError, match=r"at least 0\.6\d GiB.*raise --max-index-memory"):
        choose(10_000_000, 256, "auto", int(0.5 * G))


@pytest.mark.parametrize("kind", ["ivf", "ivf_sq8", "ivf_pq"])
def test_every_trained_type_stores_vectors_by_id_and_skips_excluded_ones(kind):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(12_000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1_000, 13_000)
    index = faiss_factory.build(vectors, ids, kind)
    assert index.ntotal == 12_000 and sorted(faiss_factory.ids_of(index)) == ids.tolist()
    np.testing.assert_allclose(index.reconstruct_batch(ids[:50]), vectors[:50], atol=0.2 if kind == "ivf_pq" else 0.01)
    _, found = faiss_factory.search(index, vectors[:20], 5, faiss_factory.excluding(ids[:10]))
    assert not set(found.ravel()) & set(ids[:10].tolist())
    _, found = faiss_factory.search(index, vectors[10:20], 1)
    assert (found[:, 0] == ids[10:20]).mean() >= 0.8  # each finds itself (PQ's codes lose a little)


def test_named_types_are_checked_by_name_and_pq_needs_a_dimension_it_divides(tmp_path):
    from simengine.dedup.near import search_type
    from simengine.index.build import check_target

    assert check_target(tmp_path / "new", "ivf_pq") is False  # no collection yet: only the name is checked
    with pytest.raises(SimengineError, match="divisible"):
        index_choice.spec("ivf_pq", 10_000, 7)
    with pytest.raises(SimengineError, match="approximate"):
        search_type(10_000, "ivf_sq8")
    assert search_type(10_000, "ivf") == "ivf"
