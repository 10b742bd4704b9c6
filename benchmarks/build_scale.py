"""An index built from embedding shards within a memory budget: 10M vectors in 4 GiB by default.

Vectors are real simengine embeddings (from an index) plus noise, as search_scale.py draws them, written as
`simengine embed` shards (labels carried over from the real items). The build is the real command,
`simengine index build --from-embeddings`, run as a child process so that its peak RSS is its own. Then the index is
opened as a server opens it (its RSS growth is the index's memory) and asked 1,000 fresh queries: recall@10 against
exact search over every shard, and queries/s, batched and one at a time.

    python benchmarks/build_scale.py --index indexes/default --vectors 10000000 --max-index-memory 4G
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, table, write  # noqa: E402
from search_scale import noisy, recall_at_k  # noqa: E402

from simengine.data.folders import Item  # noqa: E402
from simengine.store import faiss_factory, rows  # noqa: E402
from simengine.index.from_embeddings import exact_neighbours, finished_shards  # noqa: E402
from simengine.index.reader import Index  # noqa: E402
from simengine.model.bundle import load_bundle  # noqa: E402
from simengine.shards.worker import model_identity  # noqa: E402
from simengine.shards.layout import write_collection  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def write_shards(index_dir: Path, out: Path, n: int, shard_size: int, sigma: float, seed: int) -> dict:
    """n noisy copies of the index's vectors as an embeddings folder of the index's model."""
    seed_index = Index(index_dir)
    ids = rows.live_ids(seed_index.conn, seed_index.version)
    base = seed_index.vectors(ids)
    items_by_id = seed_index.items(ids)
    labels = [items_by_id[int(i)]["label"] for i in ids]
    model = load_bundle(seed_index.model_dir)
    rng = np.random.default_rng(seed)

    def shards():
        for k, start in enumerate(range(0, n, shard_size)):
            count = min(shard_size, n - start)
            picks = rng.integers(0, len(base), count)
            vectors = noisy(base[picks], count, sigma, np.random.default_rng([seed, k]))
            items = [Item(Path(f"synthetic/{k}/{i}.jpg"), labels[p], None, f"{k:032x}{i:032x}")
                     for i, p in enumerate(picks)]
            yield vectors, items

    started = time.perf_counter()
    write_collection(out, model_identity(model), shards())
    return {"seconds": time.perf_counter() - started, "base": base, "model_dir": seed_index.model_dir}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, default=Path("indexes/default"), help="index whose vectors seed the data")
    parser.add_argument("--vectors", type=int, default=10_000_000)
    parser.add_argument("--shard-size", type=int, default=100_000)
    parser.add_argument("--max-index-memory", default="4G")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--sigma", type=float, default=0.3)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path("/tmp/simengine-build-scale"),
                        help="scratch folder for the shards and the index (emptied first)")
    parser.add_argument("--repeats", type=int, default=3, help="batched search timings (median)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="build_scale")
    args = parser.parse_args(argv)

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    embeddings, index_dir = args.work / "embeddings", args.work / "index"
    generated = write_shards(args.index, embeddings, args.vectors, args.shard_size, args.sigma, seed=0)
    print(f"shards written in {generated['seconds']:.0f} s", flush=True)

    command = [sys.executable, "-m", "simengine.cli", "-q", "index", "build", "--from-embeddings", str(embeddings),
               "--model", str(generated["model_dir"]), "--out", str(index_dir), "--max-index-memory",
               args.max_index_memory, "--json"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    build_s = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"build failed: {done.stderr[-2000:]}")
    build = json.loads(done.stdout)
    build_peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(build, flush=True)

    rng = np.random.default_rng(1)
    queries = noisy(generated["base"], args.queries, args.sigma, rng)
    _, shards = finished_shards(embeddings)
    started = time.perf_counter()
    truth = exact_neighbours(queries, embeddings, shards, args.k)  # positions; the new index's ids start at 0
    exact_s = time.perf_counter() - started

    before = rss_bytes()
    index = Index(index_dir)
    index_rss = rss_bytes() - before
    first_id = min(s["id_min"] for s in index.manifest["segments"])
    timings = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        _, found = index.search(queries, args.k)
        timings.append(time.perf_counter() - started)
    batched_qps = args.queries / float(np.median(timings))
    started = time.perf_counter()
    for q in queries[:args.single]:
        index.search(q[None, :], args.k)
    single_qps = args.single / (time.perf_counter() - started)
    segment_bytes = sum(s["bytes"] for s in index.manifest["segments"])
    sweep = []  # the trade-off around the nprobe the build chose
    ivfs = [faiss_factory.ivf_of(segment) for segment in index._segments.values()]
    if all(ivf is not None for ivf in ivfs):
        chosen = ivfs[0].nprobe
        for nprobe in sorted({max(1, chosen // 2), chosen, chosen * 2}):
            for ivf in ivfs:
                ivf.nprobe = nprobe
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                _, swept = index.search(queries, args.k)
                times.append(time.perf_counter() - started)
            sweep.append({"nprobe": nprobe, f"recall_at_{args.k}": recall_at_k(swept - first_id, truth),
                          "batched_qps": args.queries / float(np.median(times))})
        for ivf in ivfs:
            ivf.nprobe = chosen
    result = {
        "vectors": args.vectors, "dim": int(generated["base"].shape[1]), "base_vectors": len(generated["base"]),
        "sigma": args.sigma, "shard_size": args.shard_size, "shards": len(shards), "queries": args.queries,
        "max_index_memory": args.max_index_memory, "write_shards_s": generated["seconds"],
        "build": build, "build_wall_s": build_s, "build_peak_rss_bytes": build_peak_rss,
        "index_rss_bytes": index_rss, "segment_bytes": segment_bytes,
        f"recall_at_{args.k}": recall_at_k(found - first_id, truth), "batched_qps": batched_qps,
        "single_qps": single_qps, "nprobe_sweep": sweep, "exact_search_s": exact_s, "sqlite_bytes": (index_dir / rows.ITEMS_DB).stat().st_size,
    }
    index.close()
    write(args.name, result, markdown(result, args.k), args.out)
    shutil.rmtree(args.work, ignore_errors=True)
    return result


def markdown(r: dict, k: int) -> str:
    gib = lambda b: b / 2**30  # noqa: E731
    b = r["build"]
    rows = [["index type", f"{b['index_type']} ({b['factory']}), {b['segments']} segment(s)"],
            ["nprobe (tuned at build)", f"{b['nprobe']} (recall@{k} {b['sample_recall_at_10']:.4f} on its sample)"],
            [f"recall@{k}, {r['queries']} fresh queries, against exact search", f"{r[f'recall_at_{k}']:.4f}"],
            ["queries/s, batched", f"{r['batched_qps']:.0f}"], ["queries/s, one at a time", f"{r['single_qps']:.0f}"],
            ["build time (the command)", f"{r['build_wall_s']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in b['seconds'].items())})"],
            ["build peak RSS", f"{gib(r['build_peak_rss_bytes']):.2f} GiB"],
            ["index memory: estimate / RSS of the opened index / segment files",
             f"{gib(b['estimated_bytes']):.2f} / {gib(r['index_rss_bytes']):.2f} / {gib(r['segment_bytes']):.2f} GiB"],
            ["SQLite rows", f"{gib(r['sqlite_bytes']):.2f} GiB"]]
    sweep = table(["nprobe", f"recall@{k}", "queries/s, batched"],
                  [[s["nprobe"], s[f"recall_at_{k}"], f"{s['batched_qps']:.0f}"] for s in r.get("nprobe_sweep", [])])
    return (f"# Index build from embedding shards within a memory budget\n\n{r['vectors']:,} vectors of dim {r['dim']} "
            f"(the {r['base_vectors']:,} real embeddings of the seed index plus noise, sigma {r['sigma']}), in "
            f"{r['shards']} shards of {r['shard_size']:,}; budget {r['max_index_memory']}.\n\n"
            + table(["", "value"], rows) + "\n\nAround the nprobe the build chose (same queries, medians of "
            + "the batched timings):\n\n" + sweep + "\n")


if __name__ == "__main__":
    main()
