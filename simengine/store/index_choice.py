"""Which FAISS index a segment gets, from its size and a memory budget, as autofaiss chooses: the most exact index
that fits. Flat for small collections; HNSW while it fits and builds in reasonable time; then IVF with exact
vectors, with 8-bit scalar codes, and with product-quantised codes of the largest size that fits. Unlike autofaiss,
no OPQ rotation before PQ: training one took 130 s on 10,000 256-d vectors on 2 cores (FAISS 1.15), ten times the
PQ's own training.

Sizes are estimates of the searchable index in RAM: codes, the int64 id of each vector, and the hash map from id to
position that lets the reader fetch a stored vector by id (`Index.vectors`, used to verify with the pair head).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from simengine.errors import SimengineError

FLAT_MAX = 100_000  # below this, exact search is fast enough (benchmarks/search_scale.py measures the knee)
HNSW_M = 32
HNSW_BUILD_MAX = 1_000_000  # a 1M-vector HNSW takes ~10 minutes to build on one thread; IVF beyond
ID_BYTES = 8
ID_MAP_BYTES = 48  # one std::unordered_map entry (id -> position); benchmarks/build_scale.py measures the total
PQ_SIZES = (128, 64, 32, 16, 8)  # bytes per vector, largest first
TRAIN_POINTS_PER_LIST = 39  # FAISS warns below this many training points per list
PQ_TRAIN_POINTS = 256 * TRAIN_POINTS_PER_LIST  # each sub-quantizer has 256 centroids
TRAINED_TYPES = ("ivf", "ivf_sq8", "ivf_pq")
INDEX_TYPES = ("auto", "flat", "hnsw") + TRAINED_TYPES


@dataclass(frozen=True)
class IndexSpec:
    """A chosen index: its type, the FAISS factory string, and what it needs."""

    kind: str
    factory: str
    bytes_per_vector: int
    fixed_bytes: int
    nlist: int = 0

    def memory(self, n: int) -> int:
        return self.fixed_bytes + n * self.bytes_per_vector

    @property
    def trained(self) -> bool:
        return self.kind in TRAINED_TYPES

    def train_size(self, n: int) -> int:
        """How many vectors to train on (a uniform sample of the collection)."""
        if not self.trained:
            return 0
        wanted = TRAIN_POINTS_PER_LIST * self.nlist
        if self.kind == "ivf_pq":
            wanted = max(wanted, PQ_TRAIN_POINTS)
        return min(n, wanted)


def parse_memory(text: str) -> int:
    """Bytes from '4G', '512M', '1.5GB', '2000000' (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise SimengineError(f"cannot read {text!r} as a memory size; write it like 4G, 512M or 2000000")
    scale = 1024 ** " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * scale)


def nlist_for(n: int) -> int:
    """About 2 sqrt(n) lists, a power of two, with enough training points for each."""
    nlist = 2 ** round(math.log2(max(2 * math.sqrt(max(n, 1)), 1)))
    return max(1, min(nlist, n // TRAIN_POINTS_PER_LIST))


def spec(kind: str, n: int, dim: int, pq_bytes: int | None = None) -> IndexSpec:
    """The spec of `kind` for n vectors of `dim`."""
    per_id = ID_BYTES + ID_MAP_BYTES
    if kind == "flat":
        return IndexSpec(kind, "Flat", 4 * dim + per_id, 0)
    if kind == "hnsw":
        return IndexSpec(kind, f"HNSW{HNSW_M}", 4 * dim + 2 * HNSW_M * 4 + per_id, 0)
    if kind not in TRAINED_TYPES:
        raise SimengineError(f"unknown index type {kind!r}; choose one of {', '.join(INDEX_TYPES)}")
    nlist = nlist_for(n)
    quantizer = nlist * (4 * dim + 2 * HNSW_M * 4)
    if kind == "ivf":
        return IndexSpec(kind, f"IVF{nlist}_HNSW{HNSW_M},Flat", 4 * dim + per_id, quantizer, nlist)
    if kind == "ivf_sq8":
        return IndexSpec(kind, f"IVF{nlist}_HNSW{HNSW_M},SQ8", dim + per_id, quantizer, nlist)
    m = pq_bytes or max((b for b in PQ_SIZES if dim % b == 0 and b <= dim), default=None)
    if m is None or dim % m:
        raise SimengineError(f"product quantization needs a dimension divisible by one of {PQ_SIZES}, not {dim}")
    # No polysemous training ("np"): FAISS's default for IVF-PQ, it is simulated annealing that took minutes on 10k
    # vectors here, for a code ordering that only Hamming-distance filtering (not used here) needs.
    return IndexSpec(kind, f"IVF{nlist}_HNSW{HNSW_M},PQ{m}x8np", m + per_id, quantizer, nlist)


def check_type(kind: str) -> str:
    """`kind` if it names an index type (or auto), else one clear error."""
    if kind not in INDEX_TYPES:
        raise SimengineError(f"unknown index type {kind!r}; choose one of {', '.join(INDEX_TYPES)}")
    return kind


def choose(n: int, dim: int, requested: str = "auto", max_memory: int | None = None) -> IndexSpec:
    """The index for n vectors: `requested` if not auto; else without a budget Flat below FLAT_MAX and HNSW above
    (what fits in RAM is the caller's business), and with one the most exact index whose estimate fits."""
    if check_type(requested) != "auto":
        return spec(requested, n, dim)
    if max_memory is None:
        return spec("flat" if n < FLAT_MAX else "hnsw", n, dim)
    ladder = [spec("flat", n, dim)] if n < FLAT_MAX else []
    ladder += [spec("hnsw", n, dim)] if n <= HNSW_BUILD_MAX else []
    ladder += [spec("ivf", n, dim), spec("ivf_sq8", n, dim)]
    ladder += [spec("ivf_pq", n, dim, m) for m in PQ_SIZES if dim % m == 0 and m < dim]
    for candidate in ladder:
        if candidate.memory(n) <= max_memory:
            return candidate
    smallest = ladder[-1]
    raise SimengineError(f"{n} vectors of dim {dim} need at least {smallest.memory(n) / 2**30:.2f} GiB "
                         f"({smallest.factory}); raise --max-index-memory above {max_memory / 2**30:.2f} GiB")
