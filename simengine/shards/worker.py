"""The work on one shard, the same here and in a Ray actor: embed its images with the bundle and write it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simengine.shards.layout import Shard, write_shard


def model_identity(model) -> dict[str, Any]:
    """What the vectors depend on: the bundle (its hash), the runtime that ran it (resolved: `auto` may choose a
    reduced precision on one machine and not on another), the embedding's size."""
    return {"bundle_hash": model.hash, "runtime": model.runtime, "dim": model.dim}


def embed_shard(model, out: Path, shard: Shard, schema: dict[str, str]) -> tuple[int, list[dict[str, str]]]:
    """Embed one shard with `model` and write it; returns (vectors written, failures)."""
    result = model.embed_paths([item.path for item in shard.items])
    failed = [(i, reason) for i, _, reason in result.failed]
    write_shard(out, shard, result.vectors, result.ok, failed, schema)
    return len(result.ok), [{"path": str(shard.items[i].path), "reason": reason} for i, reason in failed]
