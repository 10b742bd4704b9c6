"""Embedding to shards on Ray against the local path, in one run: the local path, a local Ray with 1 and 2 actors,
and a 2-node cluster simulated on this machine (`ray.cluster_utils.Cluster`, one CPU per node) with 1 and 2 actors.
Reports images/s, the overhead against the local path (Ray's start included, and without it), and the largest
difference of any vector from the local path's. On one 2-core machine no speed-up is possible: the point is
correctness and what Ray costs.

    python benchmarks/embed_ray.py --data ../shared/data/imagenette2-160 --model indexes/default-model
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: every server on loopback

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, table, write  # noqa: E402

from simengine.data.folders import scan_split  # noqa: E402
from simengine.shards.embed import embed_collection  # noqa: E402
from simengine.shards.layout import iter_shards  # noqa: E402
from simengine.ray_cluster import LOOPBACK, cluster_addresses, is_loopback_only  # noqa: E402


def vectors_by_path(out: Path) -> dict[str, np.ndarray]:
    return {row["image_path"]: vectors[i] for _, vectors, rows in iter_shards(out) for i, row in enumerate(rows)}


def timed_embed(listed: Path, out: Path, model: Path, shard_size: int, repeats: int, **ray_args
                ) -> tuple[float, dict]:
    """The median seconds of `repeats` runs into fresh folders (the last one kept in `out`), and the last report."""
    seconds = []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        report = embed_collection(listed, out, model, shard_size=shard_size, **ray_args)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), report.to_dict()


def run(listed: Path, model: Path, n: int, shard_size: int, tmp: Path, repeats: int) -> list[dict]:
    import ray
    from ray.cluster_utils import Cluster

    rows = []
    seconds, report = timed_embed(listed, tmp / "local", model, shard_size, repeats)
    rows.append({"setup": "local path (no Ray)", "workers": 1, "seconds": seconds, "start_s": 0.0, "report": report})
    reference = vectors_by_path(tmp / "local")

    def add(setup: str, workers: int, start_s: float, **ray_args) -> None:
        out = tmp / f"{setup}-{workers}".replace(" ", "_")
        seconds, report = timed_embed(listed, out, model, shard_size, repeats, use_ray=True, workers=workers,
                                      **ray_args)
        got = vectors_by_path(out)
        assert got.keys() == reference.keys()
        diff = float(max(np.abs(got[p] - reference[p]).max() for p in reference))
        rows.append({"setup": setup, "workers": workers, "seconds": seconds, "start_s": start_s, "report": report,
                     "max_abs_diff_to_local": diff, "loopback_only": is_loopback_only(cluster_addresses())})

    started = time.perf_counter()
    ray.init(_node_ip_address=LOOPBACK, include_dashboard=False, configure_logging=False, log_to_driver=False,
             num_cpus=os.cpu_count())
    start_s = time.perf_counter() - started
    try:
        for workers in (1, 2):
            add("local Ray", workers, start_s)
    finally:
        ray.shutdown()
    started = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": LOOPBACK,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
    ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
    start_s = time.perf_counter() - started
    try:
        for workers in (1, 2):
            add("2-node cluster", workers, start_s, ray_address=cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()
    local = rows[0]["seconds"]
    for row in rows:
        row["images_per_s"] = n / row["seconds"]
        row["overhead_vs_local"] = row["seconds"] / local - 1
        row["nodes_used"] = len(row["report"]["nodes"]) or 1
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", type=Path, default=Path("indexes/default-model"))
    parser.add_argument("--images", type=int, default=1024, help="val images embedded by every setup")
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="runs per setup; the median is reported")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="embed_ray")
    args = parser.parse_args(argv)

    val = scan_split(args.data, "val")
    paths = [val[i].path for i in np.random.default_rng(0).choice(len(val), min(args.images, len(val)), replace=False)]
    with tempfile.TemporaryDirectory() as tmp:
        listed = Path(tmp) / "images.txt"
        listed.write_text("".join(f"{p}\n" for p in paths))
        rows = run(listed, args.model, len(paths), args.shard_size, Path(tmp), args.repeats)
        shutil.rmtree(Path(tmp) / "local", ignore_errors=True)
    result = {"images": len(paths), "shard_size": args.shard_size, "cores": os.cpu_count(), "repeats": args.repeats,
              "rows": [{k: v for k, v in r.items() if k != "report"} | {"nodes": r["report"]["nodes"]} for r in rows]}
    write(args.name, result, markdown(result), args.out)
    return result


def markdown(r: dict) -> str:
    t = table(["setup", "actors", "nodes used", "seconds", "images/s", "overhead vs local", "Ray start s",
               "largest |diff| to local", "loopback only"],
              [[x["setup"], x["workers"], x["nodes_used"], x["seconds"], x["images_per_s"], x["overhead_vs_local"],
                x["start_s"], x.get("max_abs_diff_to_local"), x.get("loopback_only")] for x in r["rows"]])
    return (f"# Embedding to shards: local path and Ray\n\n{r['images']} val JPEG files, shards of {r['shard_size']}, "
            f"{r['cores']} cores shared by every node (the cluster is simulated on this machine). Seconds are the "
            f"`embed_collection` call, median of {r['repeats']} (Ray already started, its start in the column beside; the "
            f"actors' start, each loading the model, included).\n\n{t}\n")


if __name__ == "__main__":
    main()
