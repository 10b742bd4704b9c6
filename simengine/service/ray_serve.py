"""The HTTP service on Ray Serve, the index split into shard deployments.

The frontend deployment runs the same FastAPI app as `simengine serve` (same routes, limits and metrics); it decodes
uploads and sends them to the encoder deployment, which embeds those of every frontend replica in batches
(`@serve.batch`); its index differs too: a `ShardedIndex` holds the rows, calibration and
versions, and sends every search to the shard deployments, which hold the FAISS segments (shard i of n: segments
i, i+n, ...). A query fans out, the top-k lists merge, and the frontend verifies the merged neighbours with the pair
head on vectors fetched from the shards that hold them. Frontend replicas scale with load (Serve autoscaling);
each shard deployment can have replicas too.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simengine.errors import SimengineError
from simengine.index.reader import Index
from simengine.ray_cluster import serve_replica_on_loopback
from simengine.store.layout import StoreDir
from simengine.store.reader import merge_best

log = logging.getLogger(__name__)

APP_NAME = "simengine"
SHARD_CPUS = 0.25  # Ray Serve's controller and proxy need CPUs too: on a 2-core node, whole CPUs starve them
FRONTEND_CPUS = 0.25
ENCODER_CPUS = 0.5


class IndexShard(Index):
    """Segments i, i+n, i+2n, ... of an index (shard i of n), searched and read like a whole index."""

    def __init__(self, path: str | os.PathLike, shard: int, shards: int):
        if not 0 <= shard < shards:
            raise SimengineError(f"shard {shard} of {shards} does not exist")
        self.shard, self.shards = shard, shards
        super().__init__(path)

    def _held(self, segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return segments[self.shard::self.shards]

    def held_vectors(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(positions in `ids`, vectors) of the ids whose segments this shard holds."""
        ids = np.asarray(ids, np.int64)
        held = np.zeros(len(ids), bool)
        for segment in self._held(self.manifest["segments"]):
            held |= (ids >= segment["id_min"]) & (ids <= segment["id_max"])
        positions = np.flatnonzero(held)
        return positions, self.vectors(ids[positions])


class ShardedIndex(Index):
    """An index whose segments live in shard deployments: searches fan out to every shard and merge; stored
    vectors come from the shard that holds them. Rows, calibration and versions are read here, as by `Index`."""

    def __init__(self, path: str | os.PathLike, shards: Sequence[Any], timeout_s: float):
        self.shard_handles, self.timeout_s = list(shards), timeout_s
        super().__init__(path)

    def _gather(self, pending: list) -> list:
        return [response.result(timeout_s=self.timeout_s) for response in pending]

    def _held(self, segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return []

    def search_segments(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        found = self._gather([shard.search.remote(queries, k, allowed) for shard in self.shard_handles])
        sims, ids = merge_best(found, k, len(queries))
        # A shard that moved to a newer version than this snapshot may return items it does not know yet
        unknown = (ids >= self.manifest["next_id"]) | np.isin(ids, self._excluded)
        ids[unknown], sims[unknown] = -1, -np.inf
        return sims, ids

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        if np.isin(ids, self._excluded).any():
            raise SimengineError(f"item {ids[np.isin(ids, self._excluded)][0]} was removed from {self.path}")
        out = np.zeros((len(ids), self.manifest["dim"]), np.float32)
        found = np.zeros(len(ids), bool)
        for positions, vectors in self._gather([s.held_vectors.remote(ids) for s in self.shard_handles]):
            out[positions], found[positions] = vectors, True
        if not found.all():
            raise SimengineError(f"no vector for id {int(ids[~found][0])} in {self.path}")
        return out


class ShardSearcher:
    """A shard deployment: one `IndexShard`, moved to the newest version before each call."""

    def __init__(self, index_dir: str, shard: int, shards: int):
        serve_replica_on_loopback()
        self.index = IndexShard(index_dir, shard, shards)
        self.lock = threading.Lock()  # Serve may run calls on several threads; the snapshot moves under one

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            self.index.refresh()
            return self.index.search_segments(queries, k, allowed)

    def held_vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            self.index.refresh()
            return self.index.held_vectors(ids)


class BatchedEncoder:
    """The encoder deployment: decoded images from every frontend replica, embedded in batches (`@serve.batch`:
    up to the service's batch size, waiting at most its batch wait for more)."""

    def __init__(self, index_dir: str, runtime: str, max_batch_size: int, max_wait_s: float):
        from ray import serve  # here, not at import: Ray must be imported after ray_cluster's loopback setting

        from simengine.model.bundle import load_bundle

        serve_replica_on_loopback()
        store = StoreDir(index_dir)
        self.model = load_bundle(store.attached_dir(store.read_manifest(store.current_version())), runtime)
        self.embed = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=max_wait_s)(self._embed_batch)
        self.recent_batches: collections.deque[int] = collections.deque(maxlen=1000)

    async def _embed_batch(self, arrays: list[np.ndarray]) -> list[tuple[np.ndarray, str]]:
        self.recent_batches.append(len(arrays))
        vectors = self.model.embed_batch(np.stack(arrays))
        return [(vector, self.model.hash) for vector in vectors]

    def batch_sizes(self) -> list[int]:
        """Sizes of the last 1,000 batches."""
        return list(self.recent_batches)


class _Frontend:
    def __init__(self, *deployments):
        """Takes the shard and encoder deployments so that they deploy with the frontend; the app reaches them by
        name."""


def _frontend_app(index_dir: str, shards: int, mode, runtime: str, limits, api_key, hosts):
    """Built on each frontend replica: the service's app over a `ShardedIndex`."""
    from ray import serve

    from simengine.query.engine import Engine
    from simengine.service.app import create_app

    serve_replica_on_loopback()
    handles = [serve.get_deployment_handle(f"shard-{i}", app_name=APP_NAME) for i in range(shards)]
    encoder = serve.get_deployment_handle("encoder", app_name=APP_NAME)

    async def remote_embed(array: np.ndarray) -> tuple[np.ndarray, str]:
        return await encoder.embed.remote(array)

    return create_app(index_dir, mode, limits, api_key, hosts, runtime,
                      open_engine=lambda: Engine.over(ShardedIndex(index_dir, handles, limits.timeout_s), mode,
                                                      runtime, limits.max_pixels),
                      remote_embed=remote_embed)


def sharded_application(index_dir: str | os.PathLike, shards: int, replicas: int = 1, mode: str | None = None,
                        runtime: str = "auto", limits=None, api_key: str | None = None,
                        hosts: Sequence[str] | None = None):
    """The Ray Serve application: `shards` shard deployments and a frontend of `replicas` replicas (0: autoscaled
    from 1 to 4 with the requests in flight)."""
    from ray import serve

    from simengine.service.app import ServiceLimits
    from simengine.service.security import LOOPBACK_HOSTS

    index_dir = str(Path(index_dir).resolve())
    store = StoreDir(index_dir)
    segments = len(store.read_manifest(store.current_version())["segments"])
    if not 1 <= shards <= max(segments, 1):
        raise SimengineError(f"{index_dir} has {segments} segment(s): choose 1 to {max(segments, 1)} shards")
    limits = limits or ServiceLimits()
    shard = serve.deployment(ShardSearcher, ray_actor_options={"num_cpus": SHARD_CPUS})
    bound = [shard.options(name=f"shard-{i}").bind(index_dir, i, shards) for i in range(shards)]
    # @serve.batch gathers only the calls a replica holds at once: it must accept at least a batch of them.
    encoder = serve.deployment(BatchedEncoder, name="encoder", ray_actor_options={"num_cpus": ENCODER_CPUS},
                               max_ongoing_requests=max(2 * limits.max_batch_size, 64))
    bound.append(encoder.bind(index_dir, runtime, limits.max_batch_size, limits.max_wait_s))
    scaling = ({"autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}}
               if replicas == 0 else {"num_replicas": replicas})
    answered = list(hosts or LOOPBACK_HOSTS)

    def builder():  # a function of no arguments: Ray Serve calls it on each replica (a partial would be taken for an app)
        return _frontend_app(index_dir, shards, mode, runtime, limits, api_key, answered)

    frontend = serve.deployment(serve.ingress(builder)(_Frontend), name="frontend",
                                ray_actor_options={"num_cpus": FRONTEND_CPUS},
                                max_ongoing_requests=max(limits.max_pending, limits.max_batch_size), **scaling)
    return frontend.bind(*bound)


def run_on_ray(index_dir: str | os.PathLike, shards: int, replicas: int, host: str, port: int,
               address: str | None, **app_options) -> None:
    """Serve the sharded service on Ray (a local Ray on 127.0.0.1 when `address` is None) at http://host:port/
    until interrupted, then shut Serve down."""
    from simengine.ray_cluster import connected

    with connected(address):
        from ray import serve

        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(sharded_application(index_dir, shards, replicas, **app_options), name=APP_NAME,
                      route_prefix="/")
            shown = f"[{host}]" if ":" in host else host
            log.info("serving %d shard(s) on Ray at http://%s:%d/", shards, shown, port)
            while True:
                time.sleep(3600)
        finally:
            serve.shutdown()
