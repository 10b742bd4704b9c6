"""Uploads to embeddings: decoded from memory in a thread pool, in parallel, then embedded in dynamic batches
together with the uploads of every other request in flight."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable

import numpy as np

from simengine.data.decode import WEB_FORMATS
from simengine.model.bundle import Model
from simengine.model.runtimes import usable_cores
from simengine.query.refs import Embedded
from simengine.service.batching import DynamicBatcher

MAX_BATCH_SIZE = 32
MAX_WAIT_S = 0.004


def in_thread(pool: ThreadPoolExecutor, fn: Callable, *args, **kwargs) -> asyncio.Future:
    """`fn(*args, **kwargs)` on `pool`, awaitable, with the caller's context (its request id reaches log lines)."""
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return asyncio.get_running_loop().run_in_executor(pool, call)


class UploadEmbedder:
    """Embeds uploaded image bytes. Decoding (JPEG, PNG, ... up to `max_pixels`, checked from the header) runs on
    `decode_workers` threads; the embedding runs on the batcher's one thread, `max_batch_size` images at a time,
    at most `max_queued` images waiting (beyond that `embed` raises QueueFull)."""

    def __init__(self, max_batch_size: int = MAX_BATCH_SIZE, max_wait_s: float = MAX_WAIT_S, max_queued: int = 1024,
                 decode_workers: int | None = None, on_batch: Callable[[int, float], None] | None = None,
                 remote: Callable[[np.ndarray], Awaitable[tuple[np.ndarray, str]]] | None = None):
        """`remote`, when given, embeds each decoded image elsewhere (an encoder deployment that batches the
        images of every frontend, on Ray Serve) and returns (vector, model hash); the local batcher is then idle."""
        self.decode_pool = ThreadPoolExecutor(decode_workers or usable_cores(), "simengine-decode")
        self.batcher = DynamicBatcher(embed_batch, max_batch_size, max_wait_s, max_queued, on_batch,
                                      name="simengine-embed")
        self.remote = remote

    async def embed(self, model: Model, uploads: list[tuple[str, bytes]]) -> list[Embedded]:
        """Embeddings of (name, bytes) uploads by `model`; a bad image raises ImageLoadError naming it."""
        arrays = await asyncio.gather(*(in_thread(self.decode_pool, model.encoder.load_image, data, name=name,
                                                  formats=WEB_FORMATS) for name, data in uploads))
        if self.remote is not None:
            done = await asyncio.gather(*(self.remote(array) for array in arrays))
            return [Embedded(name, vector, model_hash) for (name, _), (vector, model_hash) in zip(uploads, done)]
        futures = self.batcher.submit([(model, array) for array in arrays])
        vectors = await asyncio.gather(*map(asyncio.wrap_future, futures))
        return [Embedded(name, vector, model.hash) for (name, _), vector in zip(uploads, vectors)]

    def close(self) -> None:
        """Finish what is queued, then stop."""
        self.batcher.close()
        self.decode_pool.shutdown()


def embed_batch(items: list[tuple[Model, np.ndarray]]) -> list[np.ndarray]:
    """One batch of (model, preprocessed image): one forward pass per model (there is one, except in the moment an
    index moves to another model)."""
    out: list[np.ndarray | None] = [None] * len(items)
    by_model: dict[int, list[int]] = {}
    for row, (model, _) in enumerate(items):
        by_model.setdefault(id(model), []).append(row)
    for rows in by_model.values():
        model = items[rows[0]][0]
        for row, vector in zip(rows, model.embed_batch(np.stack([items[r][1] for r in rows]))):
            out[row] = vector
    return out
