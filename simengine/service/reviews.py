"""Background work the web app starts and then follows: the duplicate review of the served index (one run at a time,
on a thread of its own so that queries go on), and the thumbnails of its gallery (made once, kept in memory)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from simengine.data.thumbnails import thumbnail_jpeg
from simengine.dedup.find import DuplicateReport, find_duplicates
from simengine.errors import SimengineError
from simengine.store.reader import StoreReader

THUMBNAIL_SIZES = (128, 256, 512)
THUMBNAIL_CACHE_BYTES = 64 * 2**20


class DedupReview:
    """The last duplicate search over the served index: running, done (with its report) or failed. Starting one
    while another runs answers the running one's state."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="simengine-dedup")
        self.lock = threading.Lock()
        self.state: dict[str, Any] = {"state": "idle"}
        self.report: DuplicateReport | None = None

    def start(self, index_path: str, copies: str, keep: str) -> dict[str, Any]:
        with self.lock:
            if self.state["state"] == "running":
                return self.status()
            self.report = None
            with StoreReader(index_path) as index:  # the version the search reads (a write meanwhile: see move)
                version, items = index.version, len(index)
            self.state = {"state": "running", "version": version, "items": items, "copies": copies, "keep": keep,
                          "started": time.time()}
            self.pool.submit(self._run, index_path, version, copies, keep)
            return self.status()

    def _run(self, index_path: str, version: int, copies: str, keep: str) -> None:
        try:
            report = find_duplicates(index_path, copies=copies, keep=keep)
            with StoreReader(index_path) as index:
                if index.version != version:
                    raise SimengineError("the index changed during the search: run it again")
        except Exception as exc:  # reported to whoever follows the job; the server goes on
            with self.lock:
                self.state.update(state="failed", error=str(exc), seconds=time.time() - self.state["started"])
            return
        with self.lock:
            self.report = report
            self.state.update(state="done", seconds=report.seconds)

    def status(self) -> dict[str, Any]:
        out = {k: v for k, v in self.state.items() if k != "started"}
        if self.state["state"] == "running":
            out["elapsed_s"] = round(time.time() - self.state["started"], 1)
        if self.report is not None and self.state["state"] == "done":
            out["report"] = self.report.to_dict()
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class Thumbnails:
    """Small JPEGs of indexed images by (path, content hash, size), least recently used dropped past a byte budget:
    the gallery never sends an original for a thumbnail."""

    def __init__(self, max_bytes: int = THUMBNAIL_CACHE_BYTES) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self.cache: OrderedDict[tuple, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, path: str, sha256: str, px: int) -> bytes:
        """The JPEG; raises ImageLoadError when the file cannot be read any more."""
        key = (path, sha256, px)
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        data = thumbnail_jpeg(path, px)
        with self.lock:
            if key not in self.cache:
                self.cache[key] = data
                self.bytes += len(data)
            while self.bytes > self.max_bytes and self.cache:
                self.bytes -= len(self.cache.popitem(last=False)[1])
        return data

