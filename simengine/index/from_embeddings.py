"""Building an index from an embeddings folder (`simengine embed`'s shards) with bounded memory.

The shards are read one at a time, never all vectors at once. One pass writes the SQLite rows and draws uniform
samples (to train on, to calibrate on); the index type comes from the collection's size and a memory budget
(`index_choice`); a trained index is trained once on the sample, and copies of it take the shards' vectors, in
groups that can run in parallel as Ray tasks, before they are merged list by list (or kept as one segment per
group). IVF's nprobe is then tuned against exact search on a sample of the collection.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simengine.data.sources import check_column_names
from simengine.errors import SimengineError
from simengine.files import TMP_SUFFIX
from simengine.index.calibrate import calibrate_index
from simengine.index.fill import fill_on_ray, fill_part, shard_groups
from simengine.index.model_link import replace_streamed
from simengine.index.target import check_target, commit_build
from simengine.model.bundle import Model, load_bundle
from simengine.shards.layout import (PLAN, check_shard_vectors, embedding_path, is_finished, metadata_path,
                                     read_plan)
from simengine.store import faiss_factory, index_choice
from simengine.store.layout import now_iso
from simengine.store.lock import DEFAULT_TIMEOUT_S
from simengine.store.reader import merge_best

CALIBRATION_SAMPLE = 20_000  # labelled items to calibrate on; more changes the thresholds by less than their noise
TUNE_QUERIES = 200
TUNE_K = 10
TUNE_SLACK = 0.005  # the smallest nprobe whose recall is within this of the best one tried
NPROBE_MAX = 256
SHARD_COLUMNS = {"image_path": "path", "sha256": "sha256", "label": "label"}


@dataclass
class FromEmbeddingsReport:
    """What a build from embeddings did."""

    index: Path
    items: int
    index_type: str
    factory: str
    estimated_bytes: int
    segments: int
    nprobe: int | None = None
    sample_recall: float | None = None  # recall@10 of the tuned nprobe on the tuning queries
    seconds: dict[str, float] = field(default_factory=dict)
    backend: str = "local"
    nodes: dict[str, int] = field(default_factory=dict)  # Ray node id -> parts it filled

    def to_dict(self) -> dict[str, Any]:
        return {"index": str(self.index), "items": self.items, "index_type": self.index_type, "factory": self.factory,
                "estimated_bytes": self.estimated_bytes, "segments": self.segments, "nprobe": self.nprobe,
                "sample_recall_at_10": self.sample_recall, "seconds": self.seconds, "backend": self.backend, "nodes": self.nodes}


def is_embeddings_folder(path: Path) -> bool:
    """Whether `path` is a folder of embedding shards (it holds the plan `simengine embed` writes first)."""
    return (path / PLAN).is_file()


def finished_shards(embeddings: Path) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    """The plan and (shard, vectors) of every shard, each shard's vectors checked (`check_shard_vectors`: the
    readers convert any float type and byte order, and nothing else gets in); an unfinished shard is an error
    (rerun `simengine embed`)."""
    plan = read_plan(embeddings)
    unfinished = [k for k in range(plan["shards"]) if not is_finished(embeddings, k)]
    if unfinished:
        raise SimengineError(f"{embeddings}: {len(unfinished)} of {plan['shards']} shards are not finished (first: "
                             f"{unfinished[0]}); run the same `simengine embed` again to finish them")
    return plan, [(k, check_shard_vectors(embeddings, k, plan["model"]["dim"])) for k in range(plan["shards"])]


def build_from_embeddings(
    embeddings: str | os.PathLike, out: str | os.PathLike, model: Model | str | os.PathLike,
    max_index_memory: int | None = None, index_type: str = "auto", segments: int = 1, use_ray: bool = False,
    ray_address: str | None = None, workers: int | None = None, target_far: float | None = None, seed: int = 0,
    progress: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S,
) -> FromEmbeddingsReport:
    """Index the vectors of the embeddings folder `embeddings` (made by `simengine embed` with `model`, a bundle or
    its path) at `out`, a new index or the next version of one, as `build_index` does for images. The index type
    is `index_type`, or with "auto" the most exact that fits in `max_index_memory` bytes. A trained index is filled
    in `segments` parts (on Ray with `use_ray`) and kept as that many segments; with one, the parts are merged."""
    started = time.perf_counter()
    embeddings, out = Path(embeddings), Path(out)
    in_place = check_target(out, index_type)
    if segments < 1:
        raise SimengineError(f"--segments must be at least 1, not {segments}")
    plan, shards = finished_shards(embeddings)
    check_column_names(embeddings / PLAN, list(plan["metadata_schema"]))  # they become SQLite columns
    model = model if isinstance(model, Model) else load_bundle(model)
    if model.hash != plan["model"]["bundle_hash"] or model.dim != plan["model"]["dim"]:
        raise SimengineError(f"{embeddings} was embedded by model {plan['model']['bundle_hash'][:12]}, the model given "
                             f"is {model.hash[:12]}: give the bundle that embedded it")
    n = sum(count for _, count in shards)
    if n == 0:
        raise SimengineError(f"{embeddings}: no vectors; nothing to index")
    spec = index_choice.choose(n, model.dim, index_type, max_index_memory)
    report = FromEmbeddingsReport(out, n, spec.kind, spec.factory, spec.memory(n), 0,
                                  backend="ray" if use_ray and spec.trained else "local")
    rng = np.random.default_rng(seed)
    train_rows = _positions(rng, n, spec.train_size(n))
    calibration_rows = _positions(rng, n, min(n, CALIBRATION_SAMPLE))
    tune_rows = _positions(rng, n, min(n, TUNE_QUERIES)) if spec.trained else np.zeros(0, np.int64)
    info = {"source": str(embeddings.resolve()), "source_kind": "embeddings", "labels": plan["source"]["labels"],
            "path_column": plan["source"]["path_column"], "split": None, "embedding": plan["model"],
            **{key: plan["source"][key] for key in ("folder_labels", "label_names") if key in plan["source"]},
            "max_index_memory": max_index_memory, "factory": spec.factory, "estimated_bytes": spec.memory(n)}

    def write(writer) -> None:
        replace_streamed(writer, model, model.calibration.to_dict(), spec.kind, info)
        tick = time.perf_counter()
        first_id, samples = _insert_rows(writer, embeddings, shards, list(plan["metadata_schema"]),
                                         [(train_rows, False), (calibration_rows, True), (tune_rows, False)],
                                         model.dim, progress)
        report.seconds["rows"] = time.perf_counter() - tick
        (train, _), (calibration_vectors, calibration_meta), (tune_queries, _) = samples
        writer.set_metadata(
            calibration=calibrate_index(calibration_meta, calibration_vectors, model, target_far, seed).to_dict())
        tick = time.perf_counter()
        template = faiss_factory.new(spec, model.dim, seed)
        if spec.trained:
            template.train(train)
        del train
        report.seconds["train"] = time.perf_counter() - tick
        tick = time.perf_counter()
        parts, report.nodes = _fill(template, embeddings, shards, first_id, segments if spec.trained else 1,
                                    use_ray and spec.trained, ray_address, workers, writer.store.root, progress)
        report.seconds["add"] = time.perf_counter() - tick
        tick = time.perf_counter()
        if spec.trained:
            report.nprobe, report.sample_recall, curve = _tune_nprobe(parts, tune_queries, embeddings, shards, first_id)
            info.update(nprobe=report.nprobe, tuning={"queries": len(tune_queries), "recall_at_10_by_nprobe": curve})
        report.seconds["tune"] = time.perf_counter() - tick
        digest = _template_digest(template) if spec.trained else None
        for part in parts:
            writer.save_segment(part, spec.kind, digest)
        report.segments = len(parts)

    commit_build(out, model, in_place, write, "build from embeddings", timeout_s)
    report.seconds = {k: round(v, 2) for k, v in report.seconds.items()}
    report.seconds["total"] = round(time.perf_counter() - started, 2)
    return report


def _positions(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """`size` distinct positions out of n, sorted."""
    return np.sort(rng.choice(n, size, replace=False)) if size < n else np.arange(n)


def _shard_rows(embeddings: Path, k: int, metadata_columns: Sequence[str]) -> list[dict[str, Any]]:
    """A shard's metadata as items rows: its path, hash and label, and the plan's metadata columns (the shards do
    not record image sizes: width and height stay empty)."""
    import pyarrow.parquet as pq

    added_at = now_iso()
    columns = [*SHARD_COLUMNS, *metadata_columns]
    try:
        table = pq.read_table(metadata_path(embeddings, k), columns=columns)
    except (OSError, ValueError) as exc:  # damaged past its footer, or columns missing
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SimengineError(f"{metadata_path(embeddings, k)}: unreadable ({reason}); delete it and run the same "
                             "`simengine embed` again") from None
    return [{SHARD_COLUMNS.get(key, key): value for key, value in record.items()}
            | {"split": None, "width": None, "height": None, "added_at": added_at} for record in table.to_pylist()]


def _insert_rows(writer, embeddings: Path, shards: Sequence[tuple[int, int]], metadata_columns: Sequence[str],
                 wanted: Sequence[tuple[np.ndarray, bool]], dim: int, progress: bool
                 ) -> tuple[int, list[tuple[np.ndarray, list[dict[str, Any]]]]]:
    """Write every shard's rows; returns the first id and, for each (sorted positions, keep rows) in `wanted`, the
    vectors found there and their rows if asked."""
    from tqdm import tqdm

    first_id = None
    picked: list[tuple[list[np.ndarray], list[dict[str, Any]]]] = [([], []) for _ in wanted]
    start = 0
    for k, count in tqdm(shards, unit="shard", desc="rows", disable=not progress):
        rows = _shard_rows(embeddings, k, metadata_columns)
        if len(rows) != count:
            raise SimengineError(f"{metadata_path(embeddings, k)}: {len(rows)} rows for {count} vectors")
        ids = writer.insert_rows(rows)
        first_id = ids.start if first_id is None else first_id
        vectors = np.load(embedding_path(embeddings, k), mmap_mode="r")
        for (positions, keep_rows), (vector_parts, row_parts) in zip(wanted, picked):
            local = positions[(positions >= start) & (positions < start + count)] - start
            vector_parts.append(np.asarray(vectors[local], np.float32))
            if keep_rows:
                row_parts.extend(rows[i] for i in local)
        start += count
    return first_id, [(np.concatenate(v) if v else np.zeros((0, dim), np.float32), r) for v, r in picked]


def _fill(template, embeddings: Path, shards: Sequence[tuple[int, int]], first_id: int, segments: int,
          use_ray: bool, ray_address: str | None, workers: int | None, work_dir: Path, progress: bool
          ) -> tuple[list, dict[str, int]]:
    """The filled index as `segments` parts (one: merged), and the parts each Ray node filled (with `use_ray`).
    Parts filled beyond `segments` merge into their neighbours one at a time (each keeps a range of ids)."""
    import faiss
    from tqdm import tqdm

    raw = faiss.serialize_index(template).tobytes()
    nodes: dict[str, int] = {}
    folder = work_dir / f".parts-{secrets.token_hex(3)}{TMP_SUFFIX}"  # removed by the next writer if left behind
    try:
        if use_ray:
            folder.mkdir()
            files, nodes = fill_on_ray(raw, embeddings, shards, first_id, segments, folder, ray_address, workers)
            load = [partial(_read_and_delete, path) for path in files]
        else:
            load = [partial(fill_part, raw, embeddings, group) for group in shard_groups(shards, first_id, segments)]
        parts = []
        for group in np.array_split(np.arange(len(load)), min(segments, len(load))):
            head = load[group[0]]()
            for i in tqdm(group[1:], unit="part", desc="merging", disable=not progress or len(group) == 1):
                faiss_factory.merge_lists(head, load[i]())
            faiss_factory.finish(head)
            parts.append(head)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [p for p in parts if p.ntotal], nodes


def _read_and_delete(path: str):
    import faiss

    part = faiss.read_index(path)
    os.unlink(path)
    return part


def _template_digest(template) -> str:
    import faiss

    return hashlib.sha256(faiss.serialize_index(template).tobytes()).hexdigest()[:16]


def exact_neighbours(queries: np.ndarray, embeddings: Path, shards: Sequence[tuple[int, int]], k: int) -> np.ndarray:
    """Positions (in collection order) of the k nearest vectors of each query, by exact search shard by shard."""
    best = merge_best([], k, len(queries))
    start = 0
    for shard, count in shards:
        vectors = np.asarray(np.load(embedding_path(embeddings, shard), mmap_mode="r"), np.float32)
        best = merge_best([best, faiss_factory.exact_search(queries, vectors, np.arange(start, start + count),
                                                            min(k, count))], k, len(queries))
        start += count
    return best[1]


def _tune_nprobe(parts: list, queries: np.ndarray, embeddings: Path, shards: Sequence[tuple[int, int]],
                 first_id: int) -> tuple[int, float, dict[int, float]]:
    """The smallest nprobe (powers of two) whose recall@10 against exact search is within TUNE_SLACK of the best
    tried; set on every part. Recall is measured on the union of the parts, as the reader searches them, for
    queries drawn from the collection (each finds itself: fresh queries score a little lower)."""
    k = min(TUNE_K, sum(count for _, count in shards))
    truth = exact_neighbours(queries, embeddings, shards, k)
    nlist = faiss_factory.ivf_of(parts[0]).nlist
    curve: dict[int, float] = {}
    nprobe = 1
    while nprobe <= min(nlist, NPROBE_MAX):
        for part in parts:
            faiss_factory.ivf_of(part).nprobe = nprobe
        found = _search_parts(parts, queries, k) - first_id
        curve[nprobe] = float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)]))
        if curve[nprobe] >= 0.999:
            break
        nprobe *= 2
    best = max(curve.values())
    chosen = min(p for p, r in curve.items() if r >= best - TUNE_SLACK)
    for part in parts:
        faiss_factory.ivf_of(part).nprobe = chosen
    return chosen, curve[chosen], curve


def _search_parts(parts: list, queries: np.ndarray, k: int) -> np.ndarray:
    return merge_best([faiss_factory.search(p, queries, k) for p in parts], k, len(queries))[1]
