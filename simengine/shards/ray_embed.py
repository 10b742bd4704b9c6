"""Shards embedded on a Ray cluster: Ray Data hands the planned shards to a pool of actors, each holding one loaded
model (the same bundle and runtime choice as the local path) and writing the shards it embeds (`worker.embed_shard`).

The actors ask for a fraction of a CPU: a pool that takes every CPU leaves none to Ray Data's own tasks, and the job
hangs (Ray 2.60 on 2 cores). Ray Data spreads its actors over the nodes. A shard whose actor dies is retried by Ray
Data; a job that fails anyway leaves its finished shards, and a rerun embeds only the rest.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Iterator, Sequence

from simengine.ray_cluster import connected
from simengine.shards.layout import Shard

ACTOR_CPUS = 0.5
ACTOR_START_TIMEOUT_S = 600


class ShardEmbedder:
    """A Ray Data actor: loads the model once, then embeds and writes the shards it is given."""

    def __init__(self, model_dir: str, runtime: str, out: str, schema: dict[str, str]):
        from simengine.model.bundle import load_bundle

        self.model = load_bundle(model_dir, runtime)
        self.out, self.schema = Path(out), schema

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        import ray

        from simengine.shards.worker import embed_shard

        node = ray.get_runtime_context().get_node_id()
        done: dict[str, list] = {"k": [], "written": [], "failed": [], "node": []}
        for blob in batch["shard"]:
            shard: Shard = pickle.loads(blob)
            written, failed = embed_shard(self.model, self.out, shard, self.schema)
            done["k"].append(shard.k)
            done["written"].append(written)
            done["failed"].append(pickle.dumps(failed))
            done["node"].append(node)
        return done


def embed_on_ray(model_dir: str | os.PathLike, runtime: str, out: Path, shards: Sequence[Shard],
                 schema: dict[str, str], address: str | None, workers: int | None
                 ) -> Iterator[tuple[int, int, list[dict[str, str]], str]]:
    """Embed `shards` on Ray with `runtime` (a resolved name, never "auto"); yields (k, vectors written, failures,
    node id) as shards finish. `workers` actors (default and most: one per CPU of the cluster)."""
    if not shards:
        return
    with connected(address):
        import ray

        most = max(1, int(ray.cluster_resources().get("CPU", 1)))
        workers = min(workers or most, most, len(shards))
        context = ray.data.DataContext.get_current()
        saved = context.wait_for_min_actors_s
        # The whole pool starts before the first shard: the first actor up would otherwise take every shard of a
        # small job.
        context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
        try:
            dataset = ray.data.from_items([{"shard": pickle.dumps(s)} for s in shards],
                                          override_num_blocks=len(shards))
            embedded = dataset.map_batches(
                ShardEmbedder, batch_size=1,
                # One shard in flight per actor: a busy actor's next shard goes to an idle one.
                compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
                fn_constructor_kwargs={"model_dir": str(Path(model_dir).resolve()), "runtime": runtime,
                                       "out": str(out.resolve()), "schema": schema},
                num_cpus=ACTOR_CPUS)
            for row in embedded.iter_rows():
                yield int(row["k"]), int(row["written"]), pickle.loads(row["failed"]), str(row["node"])
        finally:
            context.wait_for_min_actors_s = saved
