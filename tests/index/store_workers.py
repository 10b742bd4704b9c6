"""Processes that the concurrency tests start: writers of synthetic items, and readers querying in a loop.

    python store_workers.py write INDEX TAG BATCHES SIZE [SEED]   one commit per batch; prints "committed <ids>"
    python store_workers.py read INDEX SECONDS                    prints "reads <n> errors <m> versions <v>" and the errors
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from simengine.index.reader import Index
from simengine.store.writer import StoreWriter


def unit_rows(n: int, tag: str, dim: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [{"path": f"/synthetic/{tag}/{i}.jpg", "label": tag, "split": None, "sha256": f"{tag}-{seed}-{i}",
             "width": 1, "height": 1, "added_at": "2026-01-01T00:00:00Z"} for i in range(n)]
    return vectors, rows


def commit_rows(index: Path, n: int, tag: str, seed: int, dim: int = 256) -> list[int]:
    """Add n synthetic items as one version; returns their ids."""
    vectors, rows = unit_rows(n, tag, dim, seed)
    with StoreWriter(index, timeout_s=120) as writer:
        ids = writer.add(vectors, rows)
        writer.commit(f"add {n}")
    return ids


def write(index: Path, tag: str, batches: int, size: int, seed: int = 0) -> None:
    dim = Index(index).manifest["dim"]
    for batch in range(batches):
        ids = commit_rows(index, size, tag, seed * 100_000 + batch, dim)
        print("committed", " ".join(map(str, ids)), flush=True)


def read(index: Path, seconds: float) -> None:
    """Query the newest version in a loop; every search hit must have its row in the same snapshot."""
    idx = Index(index)
    rng = np.random.default_rng(0)
    reads, errors, versions = 0, [], set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            idx.refresh()
            query = rng.normal(size=(2, idx.manifest["dim"])).astype(np.float32)
            _, ids = idx.search(query, 10)
            hits = [int(i) for i in ids.ravel() if i >= 0]
            rows = idx.items(hits)
            if set(hits) - set(rows):
                errors.append(f"version {idx.version}: hits without rows {sorted(set(hits) - set(rows))[:5]}")
            idx.vectors(hits)
            versions.add(idx.version)
            reads += 1
        except Exception as exc:  # the test counts every failure, whatever its kind
            errors.append(f"{type(exc).__name__}: {exc}")
    print(f"reads {reads} errors {len(errors)} versions {len(versions)}", flush=True)
    for error in errors[:10]:
        print(error, flush=True)


if __name__ == "__main__":
    command, index = sys.argv[1], Path(sys.argv[2])
    if command == "write":
        write(index, sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]) if len(sys.argv) > 6 else 0)
    else:
        read(index, float(sys.argv[3]))
