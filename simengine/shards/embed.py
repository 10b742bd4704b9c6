"""`simengine embed`: a collection's embeddings written as shards (see `layout`), on this machine or on Ray.

Both paths run the same code per shard (`worker.embed_shard`): the bundle's encoder on the runtime asked for, decoding
bad files into the shard's failures instead of stopping. Locally the shards are embedded one after another; on Ray
(`ray_embed`) an actor pool embeds them in parallel, each actor holding one loaded model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simengine.errors import SimengineError
from simengine.shards.layout import LOCK, failures, is_finished, plan_shards, start_plan
from simengine.shards.worker import embed_shard, model_identity

SHARD_SIZE = 10_000  # clip-retrieval's default write batch: 40 MB of 1280-d float32, 10 MB of 256-d


@dataclass
class EmbedReport:
    """What a run did: shards embedded now, shards a previous run had finished, and the files that failed."""

    out: Path
    shards: int
    embedded_shards: list[int] = field(default_factory=list)
    skipped_shards: list[int] = field(default_factory=list)  # finished before this run
    vectors: int = 0  # written by this run
    total_vectors: int = 0  # in every finished shard
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    backend: str = "local"
    nodes: dict[str, int] = field(default_factory=dict)  # Ray node id -> shards it embedded

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "shards": self.shards, "embedded_shards": self.embedded_shards,
                "skipped_shards": self.skipped_shards, "vectors": self.vectors, "total_vectors": self.total_vectors,
                "failed": self.failed,
                "seconds": round(self.seconds, 3), "backend": self.backend, "nodes": self.nodes}


def embed_collection(source: str | os.PathLike, out: str | os.PathLike, model_dir: str | os.PathLike | None = None,
                     shard_size: int = SHARD_SIZE, runtime: str = "auto", ray_address: str | None = None,
                     use_ray: bool = False, workers: int | None = None, path_column: str = "path",
                     labels: str = "auto", progress: bool = False) -> EmbedReport:
    """Embed every image of `source` (a folder, a list or a table of paths) with the bundle at `model_dir` (or
    "builtin"; None: the default model, see `model.builtin`) into
    shards under `out`. Finished shards of the same plan are kept (a rerun resumes); with `use_ray`, on the Ray
    cluster at `ray_address` (None: a local one on 127.0.0.1) with `workers` actors. One run at a time per `out`."""
    from filelock import FileLock, Timeout

    from simengine.data.sources import scan_source
    from simengine.model.builtin import resolve_model_dir
    from simengine.model.bundle import load_bundle

    started = time.perf_counter()
    out = Path(out)
    collection = scan_source(source, labels=labels, path_column=path_column, progress=progress)
    if not collection.items:
        raise SimengineError(f"{source}: no images")
    model = load_bundle(resolve_model_dir(model_dir), runtime)
    shards = plan_shards(collection.items, shard_size)
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise SimengineError(f"{out}: another `simengine embed` is writing there") from None
    try:
        plan = start_plan(out, shards, model_identity(model),
                          {"labels": labels, "path_column": path_column, "shard_size": shard_size,
                           "folder_labels": collection.folder_labels, "label_names": True})
        report = EmbedReport(out, len(shards), backend="ray" if use_ray else "local")
        finished = {s.k for s in shards if is_finished(out, s.k)}
        report.skipped_shards = sorted(finished)
        todo = [s for s in shards if s.k not in finished]
        for k in report.skipped_shards:
            report.failed += failures(out, k)
        schema = plan["metadata_schema"]
        if use_ray:
            from simengine.shards.ray_embed import embed_on_ray

            # The runtime the driver resolved, not "auto": every actor runs what the plan records.
            for k, written, failed, node in embed_on_ray(model.path, model.runtime, out, todo, schema, ray_address,
                                                         workers):
                report.embedded_shards.append(k)
                report.vectors += written
                report.failed += failed
                report.nodes[node] = report.nodes.get(node, 0) + 1
        else:
            from tqdm import tqdm

            for shard in tqdm(todo, unit="shard", desc="embedding", disable=not progress):
                written, failed = embed_shard(model, out, shard, schema)
                report.embedded_shards.append(shard.k)
                report.vectors += written
                report.failed += failed
    finally:
        lock.release()
    report.embedded_shards.sort()
    report.total_vectors = plan["items"] - len(report.failed)
    report.failed += [{"path": p, "reason": r} for p, r in collection.skipped]
    report.seconds = time.perf_counter() - started
    return report
