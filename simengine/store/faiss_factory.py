"""FAISS indexes of one segment, of the types `index_choice` chooses from: building, search that skips excluded ids
inside FAISS, and reading a segment back out for merging."""

from __future__ import annotations


import numpy as np

from simengine.errors import SimengineError
from simengine.store import index_choice

HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
HNSW_EF_SEARCH_MAX = 2048
IVF_NPROBE = 16
KMEANS_ITERATIONS = 10  # FAISS's default of 25 costs 2.5x the training time for centroids that barely move


def build(vectors: np.ndarray, ids: np.ndarray, index_type: str, seed: int = 0):
    """An inner-product FAISS index of `index_type` over L2-normalised `vectors`, with int64 `ids`; trained types
    are trained on a uniform sample of the vectors; HNSW is built on one thread."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    spec = index_choice.spec(index_type, len(vectors), vectors.shape[1])
    index = new(spec, vectors.shape[1], seed)
    if spec.trained:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(len(vectors), spec.train_size(len(vectors)), replace=False))
        index.train(vectors[sample])
    add(index, vectors, ids)
    finish(index)
    return index


def new(spec: index_choice.IndexSpec, dim: int, seed: int = 0):
    """An empty index of `spec` (untrained, for the trained types)."""
    import faiss

    if spec.kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if spec.kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, index_choice.HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        inner.hnsw.efSearch = HNSW_EF_SEARCH
        return faiss.IndexIDMap2(inner)
    if not spec.trained:
        raise SimengineError(f"unknown index type {spec.kind!r}")
    index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)  # IVF keeps ids itself
    ivf.cp.seed = seed
    ivf.cp.niter = KMEANS_ITERATIONS
    ivf.nprobe = IVF_NPROBE
    return index


def finish(index) -> None:
    """Make stored vectors reachable by id (`reconstruct`) and removable: IVF needs a hash map from id to position.
    Set after the adds: FAISS cannot merge indexes that have one."""
    import faiss

    if (ivf := ivf_of(index)) is not None and ivf.direct_map.type != faiss.DirectMap.Hashtable:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)


def drop_id_map(index) -> None:
    """Remove IVF's id -> position map (FAISS merges only indexes without one; `finish` rebuilds it)."""
    import faiss

    ivf_of(index).set_direct_map_type(faiss.DirectMap.NoMap)


def merge_lists(index, other) -> None:
    """Move the vectors of `other` into `index`, both grown from one trained empty index, list by list."""
    drop_id_map(index)
    drop_id_map(other)
    index.merge_from(other, 0)


def ivf_of(index):
    """The IVF index inside `index`, or None."""
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def add(index, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Add with ids; HNSW on one OpenMP thread so that its graphs are reproducible (IVF adds are the same on any
    number of threads: each list takes its vectors in order)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    if ivf_of(index) is None:
        faiss.omp_set_num_threads(1)
    try:
        index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))
    finally:
        faiss.omp_set_num_threads(threads)


def ids_of(index) -> np.ndarray:
    """Every id stored in the index."""
    import faiss

    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    lists = ivf_of(index).invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(lists.nlist)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def excluding(ids: np.ndarray):
    """A FAISS selector that rejects `ids`, or None when there is nothing to reject."""
    import faiss

    if len(ids) == 0:
        return None
    return faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(ids, np.int64)))


def only(ids: np.ndarray):
    """A FAISS selector that accepts only `ids`."""
    import faiss

    return faiss.IDSelectorBatch(np.ascontiguousarray(ids, np.int64))


def search(index, queries: np.ndarray, k: int, selector=None, selected_fraction: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids), the ids rejected by `selector` never considered; -1 pads rows with fewer than k hits.
    When the selector lets through only `selected_fraction` of the items, HNSW and IVF look further in proportion
    (within a cap), since most of what they visit is then filtered out."""
    import faiss

    widen = 1 / max(selected_fraction, 1e-6)
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(efSearch=int(min(max(HNSW_EF_SEARCH, k) * widen, HNSW_EF_SEARCH_MAX)))
    elif (ivf := ivf_of(inner)) is not None:
        params = faiss.SearchParametersIVF(nprobe=int(min(ivf.nprobe * widen, ivf.nlist)))
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    return index.search(np.ascontiguousarray(queries, np.float32), k, params=params)


def exact_search(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids) of the k best of `vectors` by inner product, computed exactly."""
    import faiss

    sims, rows = faiss.knn(np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(vectors, np.float32), k,
                           metric=faiss.METRIC_INNER_PRODUCT)
    return sims, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)


def contents(index) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of every vector a segment holds."""
    ids = ids_of(index)
    if len(ids) == 0:
        return ids, np.zeros((0, index.d), np.float32)
    return ids, index.reconstruct_batch(ids)
