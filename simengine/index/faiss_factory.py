"""FAISS indexes of one segment: exact Flat for small collections, HNSW for large ones, IVF on request; search that
skips excluded ids inside FAISS, and reading a segment back out for merging."""

from __future__ import annotations

import math

import numpy as np

from simengine.errors import SimengineError

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
# Below this many vectors exact search is fast enough (benchmarks/search_scale.py measures the knee).
FLAT_MAX = 100_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
HNSW_EF_SEARCH_MAX = 2048
IVF_NPROBE = 16


def choose_type(n: int, requested: str = "auto") -> str:
    if requested not in INDEX_TYPES:
        raise SimengineError(f"unknown index type {requested!r}; choose one of {', '.join(INDEX_TYPES)}")
    if requested != "auto":
        return requested
    return "flat" if n < FLAT_MAX else "hnsw"


def build(vectors: np.ndarray, ids: np.ndarray, index_type: str, seed: int = 0):
    """An inner-product FAISS index over L2-normalised `vectors`, with int64 `ids`; HNSW is built on one thread."""
    import faiss

    vectors = np.ascontiguousarray(vectors, np.float32)
    dim = vectors.shape[1]
    if index_type == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    elif index_type == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        inner.hnsw.efSearch = HNSW_EF_SEARCH
        index = faiss.IndexIDMap2(inner)
    elif index_type == "ivf":
        # about sqrt(N) lists, and at least 39 training points per list (FAISS warns below that)
        nlist = max(1, min(int(math.sqrt(len(vectors))), len(vectors) // 39))
        quantizer = faiss.IndexFlatIP(dim)
        inner = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        inner.cp.seed = seed
        inner.train(vectors)
        inner.nprobe = IVF_NPROBE
        # IVF keeps ids itself; a hashtable direct map gives reconstruct-by-id and remove_ids.
        inner.set_direct_map_type(faiss.DirectMap.Hashtable)
        index = inner
    else:
        raise SimengineError(f"unknown index type {index_type!r}")
    add(index, vectors, ids)
    return index


def add(index, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Add with ids; one OpenMP thread so that HNSW graphs are reproducible."""
    import faiss

    threads = faiss.omp_get_max_threads()
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
    lists = faiss.extract_index_ivf(index).invlists
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
    elif isinstance(inner, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(nprobe=int(min(inner.nprobe * widen, inner.nlist)))
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
