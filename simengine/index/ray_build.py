"""Filling a trained index on Ray: one task per group of shards, each adding its shards' vectors to a copy of the
trained empty index and writing it beside the index being built (a shared file system on a real cluster); the
driver reads the parts back one at a time to merge them. A task on a lost node is retried by Ray."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Sequence

from simengine.ray_cluster import connected

TASK_CPUS = 1
TASK_RETRIES = 3


def _fill_and_write(template: bytes, embeddings: str, group: list, target: str) -> tuple[str, str]:
    import faiss
    import ray

    from simengine.index.from_embeddings import fill_part

    part = fill_part(template, Path(embeddings), group)
    tmp = f"{target}.{secrets.token_hex(3)}.tmp"
    faiss.write_index(part, tmp)
    os.replace(tmp, target)  # a retried task never leaves a half file under the name the driver reads
    return target, ray.get_runtime_context().get_node_id()


def fill_on_ray(template: bytes, embeddings: Path, shards: Sequence[tuple[int, int]], first_id: int, parts: int,
                folder: Path, address: str | None, workers: int | None) -> tuple[list[str], dict[str, int]]:
    """Files in `folder` of the parts of the filled index, in id order (at least `parts`, and one per worker:
    default and most one per CPU of the cluster), and how many parts each Ray node filled."""
    from simengine.index.from_embeddings import shard_groups

    with connected(address):
        import ray

        most = max(1, int(ray.cluster_resources().get("CPU", 1)))
        groups = shard_groups(shards, first_id, max(parts, min(workers or most, most)))
        task = ray.remote(num_cpus=TASK_CPUS, max_retries=TASK_RETRIES)(_fill_and_write)
        template_ref = ray.put(template)
        done = ray.get([task.remote(template_ref, str(embeddings.resolve()), group, str(folder.resolve() / f"part-{i}"))
                        for i, group in enumerate(groups)])
    nodes: dict[str, int] = {}
    for _, node in done:
        nodes[node] = nodes.get(node, 0) + 1
    return [path for path, _ in done], nodes
