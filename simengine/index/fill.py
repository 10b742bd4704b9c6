"""Filling a trained empty index with the vectors of an embeddings folder, in groups of shards: here, one group at a
time, or on Ray, one task per group, each adding its shards' vectors to a copy of the trained empty index and
writing it beside the index being built (a shared file system on a real cluster); the driver reads the parts back
one at a time to merge them. A task on a lost node is retried by Ray."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Sequence

import numpy as np

from simengine.ray_cluster import connected
from simengine.shards.layout import embedding_path
from simengine.store import faiss_factory

TASK_CPUS = 1
TASK_RETRIES = 3


def shard_groups(shards: Sequence[tuple[int, int]], first_id: int, parts: int) -> list[list[tuple[int, int, int]]]:
    """(shard, first id, vectors) split into at most `parts` consecutive groups of about equal size."""
    starts = np.cumsum([0] + [count for _, count in shards])[:-1] + first_id
    items = [(k, int(s), count) for (k, count), s in zip(shards, starts)]
    bounds = np.linspace(0, len(items), min(parts, len(items)) + 1).round().astype(int)
    return [items[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def fill_part(template: bytes, embeddings: Path, group: Sequence[tuple[int, int, int]]):
    """A copy of the (trained) empty index holding the vectors of `group`'s shards, one shard in memory at a time."""
    import faiss

    index = faiss.deserialize_index(np.frombuffer(template, np.uint8))
    for k, first, count in group:
        vectors = np.load(embedding_path(embeddings, k), mmap_mode="r")
        faiss_factory.add(index, np.asarray(vectors, np.float32), np.arange(first, first + count, dtype=np.int64))
    return index


def _fill_and_write(template: bytes, embeddings: str, group: list, target: str) -> tuple[str, str]:
    import faiss
    import ray

    part = fill_part(template, Path(embeddings), group)
    tmp = f"{target}.{secrets.token_hex(3)}.tmp"
    faiss.write_index(part, tmp)
    os.replace(tmp, target)  # a retried task never leaves a half file under the name the driver reads
    return target, ray.get_runtime_context().get_node_id()


def fill_on_ray(template: bytes, embeddings: Path, shards: Sequence[tuple[int, int]], first_id: int, parts: int,
                folder: Path, address: str | None, workers: int | None) -> tuple[list[str], dict[str, int]]:
    """Files in `folder` of the parts of the filled index, in id order (at least `parts`, and one per worker:
    default and most one per CPU of the cluster), and how many parts each Ray node filled."""
    with connected(address):
        import ray

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        most = max(1, int(ray.cluster_resources().get("CPU", 1)))
        groups = shard_groups(shards, first_id, max(parts, min(workers or most, most)))
        task = ray.remote(num_cpus=TASK_CPUS, max_retries=TASK_RETRIES)(_fill_and_write)
        template_ref = ray.put(template)
        # Groups are dealt to the nodes in turn: Ray's own policies (the default, and SPREAD, which is best effort)
        # may run them one after another on one node while another sits idle. Soft: a lost node's group runs
        # elsewhere.
        nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= TASK_CPUS)
        source = str(embeddings.resolve())
        done = ray.get([
            task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=True))
            .remote(template_ref, source, group, str(folder.resolve() / f"part-{i}"))
            for i, group in enumerate(groups)])
    filled: dict[str, int] = {}
    for _, node in done:
        filled[node] = filled.get(node, 0) + 1
    return [path for path, _ in done], filled
