"""Shards embedded on a Ray cluster: Ray Data hands the planned shards to a pool of actors, each holding one loaded
model (the same bundle and runtime choice as the local path) and writing the shards it embeds (`embed.embed_shard`).

The actors ask for a fraction of a CPU: a pool that takes every CPU leaves none to Ray Data's own tasks, and the job
hangs (Ray 2.60 on 2 cores). They are spread over the nodes. A shard whose actor dies is retried by Ray Data; a job
that fails anyway leaves its finished shards, and a rerun embeds only the rest.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any, Iterator, Sequence

from simengine.errors import SimengineError
from simengine.shards.layout import Shard

log = logging.getLogger(__name__)

ACTOR_CPUS = 0.5
ACTOR_START_TIMEOUT_S = 600
LOOPBACK = "127.0.0.1"
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def connect(address: str | None = None) -> dict[str, Any]:
    """Join the Ray cluster at `address` ("auto": the one this machine belongs to), or start a local one when
    `address` is None, bound to 127.0.0.1 only (checked: a local Ray that listens beyond this machine is refused).
    Returns the addresses Ray uses."""
    if address is None:
        # Ray's single-machine mode (meant for laptops) puts every server on the loopback address; on Linux it
        # otherwise binds to the machine's network address. Read when Ray is imported, so set before.
        os.environ.setdefault(LOCAL_ONLY_ENV, "0")
    try:
        import ray
    except ImportError as exc:
        raise SimengineError(f"--ray needs Ray ({exc}); pip install 'simengine[ray]'") from exc
    if not ray.is_initialized():
        if address is None:
            ray.init(_node_ip_address=LOOPBACK, include_dashboard=False, configure_logging=False,
                     log_to_driver=False)
        else:
            ray.init(address=address, configure_logging=False, log_to_driver=False)
    addresses = cluster_addresses()
    if address is None and not is_loopback_only(addresses):
        ray.shutdown()
        raise SimengineError(f"the local Ray did not stay on {LOOPBACK} ({addresses}); set {LOCAL_ONLY_ENV}=0 before "
                             "Ray is imported, or give --ray ADDRESS")
    return addresses


def is_loopback_only(addresses: dict[str, Any]) -> bool:
    hosts = [addresses["gcs"].rsplit(":", 1)[0], *addresses["nodes"]]
    return all(host == LOOPBACK for host in hosts)


def cluster_addresses() -> dict[str, Any]:
    """The GCS address and every live node's address, as Ray reports them."""
    import ray

    return {"gcs": ray.get_runtime_context().gcs_address,
            "nodes": sorted({node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]})}


class ShardEmbedder:
    """A Ray Data actor: loads the model once, then embeds and writes the shards it is given."""

    def __init__(self, model_dir: str, runtime: str, out: str):
        from simengine.model.bundle import load_bundle

        self.model = load_bundle(model_dir, runtime)
        self.out = Path(out)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        import ray

        from simengine.shards.embed import embed_shard

        node = ray.get_runtime_context().get_node_id()
        done: dict[str, list] = {"k": [], "written": [], "failed": [], "node": []}
        for blob in batch["shard"]:
            shard: Shard = pickle.loads(blob)
            written, failed = embed_shard(self.model, self.out, shard)
            done["k"].append(shard.k)
            done["written"].append(written)
            done["failed"].append(pickle.dumps(failed))
            done["node"].append(node)
        return done


def _spread() -> dict[str, Any]:
    # One actor per node before two on any. Ray 2.60 takes a scheduling strategy only this way (deprecated, to go
    # in 2.64, with no replacement named yet).
    return {"scheduling_strategy": "SPREAD"}


def embed_on_ray(model_dir: str | os.PathLike, runtime: str, out: Path, shards: Sequence[Shard],
                 address: str | None, workers: int | None) -> Iterator[tuple[int, int, list[dict[str, str]], str]]:
    """Embed `shards` on Ray; yields (k, vectors written, failures, node id) as shards finish."""
    if not shards:
        return
    connect(address)
    import ray

    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1) / ACTOR_CPUS / 2))
    # Start the whole pool before the first shard: the first actor up would otherwise take every shard of a small job.
    ray.data.DataContext.get_current().wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    dataset = ray.data.from_items([{"shard": pickle.dumps(s)} for s in shards], override_num_blocks=len(shards))
    embedded = dataset.map_batches(
        ShardEmbedder, batch_size=1,
        # One shard in flight per actor: a busy actor's next shard goes to an idle one.
        compute=ray.data.ActorPoolStrategy(size=min(workers, len(shards)), max_tasks_in_flight_per_actor=1),
        fn_constructor_kwargs={"model_dir": str(Path(model_dir).resolve()), "runtime": runtime,
                               "out": str(out.resolve())},
        num_cpus=ACTOR_CPUS, ray_remote_args_fn=_spread)
    for row in embedded.iter_rows():
        yield int(row["k"]), int(row["written"]), pickle.loads(row["failed"]), str(row["node"])
