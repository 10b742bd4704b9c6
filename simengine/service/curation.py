"""Whole-index curation reports for the server (`/v1/curate/...`): one computation at a time, on a thread of its own
so that queries go on meanwhile, and each answer kept while its version is served."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from fastapi import HTTPException

RETRY_AFTER_S = 10


class CurationReports:
    """Reports by (version, question, parameters). A request that outlasts `timeout_s` gets 503 with Retry-After
    while the computation goes on; asking again waits on the same computation, never starts another."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="simengine-curation")
        self.done: dict[tuple, dict[str, Any]] = {}
        self.running: dict[tuple, asyncio.Future] = {}

    async def report(self, question: Callable, index_path: str, version: int, args: tuple,
                     timeout_s: float) -> dict[str, Any]:
        key = (version, question.__name__, *args)
        if key in self.done:
            return self.done[key]
        future = self.running.get(key)
        if future is None:
            future = asyncio.get_running_loop().run_in_executor(self.pool, question, index_path, *args)
            future.add_done_callback(lambda f, key=key: self._finished(key, f))
            self.running[key] = future
        try:
            report = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, "this report is still being computed; ask again shortly",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        return report.to_dict()

    def _finished(self, key: tuple, future: asyncio.Future) -> None:
        self.running.pop(key, None)
        if future.cancelled() or future.exception() is not None:
            return
        report = future.result()
        for old in [k for k in self.done if k[0] != report.version]:  # one version's answers: bounded, never stale
            del self.done[old]
        self.done[(report.version, *key[1:])] = report.to_dict()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
