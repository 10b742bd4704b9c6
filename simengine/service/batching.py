"""Dynamic batching, as model servers do it (Triton's dynamic batcher, Ray Serve's `@serve.batch`): items submitted
by concurrent callers wait a few milliseconds in one bounded queue and are run together, so ten requests of two
images cost one forward pass of twenty instead of ten of two."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Callable, Generic, Sequence, TypeVar

from simengine.errors import SimengineError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class QueueFull(SimengineError):
    """The batcher already holds as many items as it may; the caller should answer 'busy, retry'."""


class DynamicBatcher(Generic[T, R]):
    """Runs `run(items) -> results` (one result per item, in order) on one thread over batches of up to
    `max_batch_size` items. A batch starts when it is full, or when its oldest item has waited `max_wait_s`; while
    one batch runs the next one fills. At most `max_queued` items wait; `submit` beyond that raises QueueFull.
    `on_batch(size, seconds)` is told of every batch run (metrics)."""

    def __init__(self, run: Callable[[list[T]], Sequence[R]], max_batch_size: int = 32, max_wait_s: float = 0.005,
                 max_queued: int = 1024, on_batch: Callable[[int, float], None] | None = None,
                 name: str = "simengine-batcher"):
        if max_batch_size < 1 or max_queued < max_batch_size or max_wait_s < 0:
            raise ValueError("need max_batch_size >= 1, max_queued >= max_batch_size and max_wait_s >= 0")
        self.run, self.max_batch_size, self.max_wait_s, self.max_queued = run, max_batch_size, max_wait_s, max_queued
        self.on_batch = on_batch
        self._queue: deque[tuple[float, T, Future]] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Items waiting for a batch (not counting the batch running now)."""
        return len(self._queue)

    def submit(self, items: Sequence[T]) -> list[Future]:
        """Queue all of `items` or none of them; one future per item."""
        with self._changed:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._queue) + len(items) > self.max_queued:
                raise QueueFull(f"{len(self._queue)} images are waiting to be embedded (at most {self.max_queued})")
            now = time.monotonic()
            futures = [Future() for _ in items]
            self._queue.extend((now, item, future) for item, future in zip(items, futures))
            self._changed.notify()
        return futures

    def close(self, timeout_s: float | None = None) -> None:
        """Refuse new items, finish the queued ones, stop the thread."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout_s)

    def _next_batch(self) -> list[tuple[float, T, Future]] | None:
        with self._changed:
            while not self._queue:
                if self._closed:
                    return None
                self._changed.wait()
            deadline = self._queue[0][0] + self.max_wait_s
            while len(self._queue) < self.max_batch_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [(item, future) for _, item, future in batch if future.set_running_or_notify_cancel()]
            if not live:
                continue  # every caller gave up (timed out or disconnected) while waiting
            start = time.perf_counter()
            try:
                results = self.run([item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
            except Exception as exc:  # delivered to every caller of this batch; the loop goes on
                for _, future in live:
                    future.set_exception(exc)
            else:
                for (_, future), result in zip(live, results):
                    future.set_result(result)
            if self.on_batch is not None:
                try:
                    self.on_batch(len(live), time.perf_counter() - start)
                except Exception:  # a metrics hook must never stop the batcher
                    log.exception("on_batch failed")
