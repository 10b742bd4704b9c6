"""Embeddings on disk in clip-retrieval's layout, so that autofaiss and other tools read them as they are:

    OUT/img_emb/img_emb_{k}.npy           float32 (rows, dim), L2-normalised: the bundle's embedding
    OUT/metadata/metadata_{k}.parquet     one row per vector: image_path, sha256, label, and the source's metadata
    OUT/failed/failed_{k}.json            the shard's files that could not be embedded, with the reason
    OUT/simengine.json                    the plan: model, shard size, and the hash of every shard's file list

A shard is finished when its metadata file exists and names the hash of the vectors file beside it: the metadata is
written last, each file through a temporary name and a rename, so a killed job (or an actor that died between two
files) leaves no half shard that counts as done, and a rerun embeds only the shards not finished.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from simengine.data.folders import Item
from simengine.errors import SimengineError
from simengine.files import sha256_file

PLAN = "simengine.json"
PLAN_VERSION = 1
LOCK = ".lock"
VECTORS_SHA256 = "simengine.img_emb_sha256"
NORM_TOLERANCE = 1e-2  # wide enough for vectors another tool stored in float16
CHECK_ROWS = 65_536  # rows checked at a time: memory stays bounded whatever a shard's size


@dataclass(frozen=True)
class Shard:
    """The k-th slice of a collection's items, in the plan's order."""

    k: int
    items: tuple[Item, ...]

    @property
    def digest(self) -> str:
        """What the shard holds: its paths and content hashes, in order."""
        lines = "\n".join(f"{item.sha256} {item.path}" for item in self.items)
        return hashlib.sha256(lines.encode()).hexdigest()


def plan_shards(items: Sequence[Item], shard_size: int) -> list[Shard]:
    """Consecutive slices of `shard_size` items (the last one shorter)."""
    if shard_size < 1:
        raise SimengineError(f"the shard size must be at least 1, not {shard_size}")
    return [Shard(k, tuple(items[start:start + shard_size])) for k, start in enumerate(range(0, len(items), shard_size))]


def embedding_path(out: Path, k: int) -> Path:
    return out / "img_emb" / f"img_emb_{k}.npy"


def metadata_path(out: Path, k: int) -> Path:
    return out / "metadata" / f"metadata_{k}.parquet"


def failed_path(out: Path, k: int) -> Path:
    return out / "failed" / f"failed_{k}.json"


def is_finished(out: Path, k: int) -> bool:
    """Its metadata file exists and names the vectors file that is there."""
    import pyarrow.parquet as pq

    if not (metadata_path(out, k).is_file() and embedding_path(out, k).is_file()):
        return False
    try:
        recorded = pq.read_schema(metadata_path(out, k)).metadata or {}
    except (OSError, ValueError):  # pyarrow's ArrowInvalid, for a file that is not Parquet, is a ValueError
        return False
    return recorded.get(VECTORS_SHA256.encode()) == sha256_file(embedding_path(out, k)).encode()


def metadata_schema(items: Sequence[Item]) -> dict[str, str]:
    """One Arrow type per metadata column for the whole collection, so that every shard's table has the same schema
    (a shard whose column is all empty would otherwise get type null) and a column of mixed values (12 and "n/a" in
    one CSV column) is stored as text instead of failing."""
    kinds: dict[str, set[type]] = {}
    for item in items:
        for key, value in item.metadata.items():
            kinds.setdefault(key, set())
            if value is not None:
                kinds[key].add(type(value))
    schema = {}
    for key, seen in sorted(kinds.items()):
        if seen and seen <= {bool}:
            schema[key] = "bool"
        elif seen and seen <= {int}:
            schema[key] = "int64"
        elif seen and seen <= {int, float}:
            schema[key] = "float64"
        else:
            schema[key] = "string"
    return schema


def start_plan(out: Path, shards: Sequence[Shard], model: dict[str, Any], source: dict[str, Any]
               ) -> dict[str, Any]:
    """Write the plan into `out`, or check that the one there is this plan (a rerun resumes it). Another plan (other
    files, labels, model, runtime or shard size) is refused: its finished shards would be mixed with this one's."""
    plan = _plan([s.digest for s in shards], sum(len(s.items) for s in shards),
                 metadata_schema([item for s in shards for item in s.items]), model, source)
    path = out / PLAN
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except ValueError as exc:
            raise SimengineError(f"{path}: corrupt ({exc})") from exc
        if existing != plan:
            what = "model or runtime" if existing.get("model") != model else "files, labels or shard size"
            raise SimengineError(f"{out}: holds embeddings of another plan (its {what} differ); embed into a new "
                                 "folder, or delete this one")
        return plan
    if out.exists() and any(p.name != LOCK for p in out.iterdir()):
        raise SimengineError(f"{out}: not empty and not an embeddings folder")
    from simengine.files import write_durably

    out.mkdir(parents=True, exist_ok=True)
    write_durably(path, json.dumps(plan, indent=2).encode())  # first: a crash after it leaves a resumable folder
    for sub in ("img_emb", "metadata", "failed"):
        (out / sub).mkdir(exist_ok=True)
    return plan


def _plan(digests: Sequence[str], items: int, schema: dict[str, str], model: dict[str, Any], source: dict[str, Any]
          ) -> dict[str, Any]:
    return {"plan_version": PLAN_VERSION, "model": model, "source": source, "shards": len(digests), "items": items,
            "shard_digests": list(digests), "metadata_schema": schema}


def write_collection(out: Path, model: dict[str, Any], shards: Iterable[tuple[np.ndarray, Sequence[Item]]],
                     labels: str = "auto") -> dict[str, Any]:
    """Write vectors made elsewhere (by the same bundle: `model` is its identity, see `worker.model_identity`) as a
    finished embeddings folder: each (vectors, items) pair one shard, the first shard's metadata columns the schema
    of all. The plan is written last, so a folder left unfinished is never read as a collection."""
    from simengine.files import write_durably

    if out.exists() and any(out.iterdir()):
        raise SimengineError(f"{out}: not empty")
    for sub in ("img_emb", "metadata", "failed"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    digests, count, schema = [], 0, None
    for k, (vectors, items) in enumerate(shards):
        vectors = checked_vectors(np.asarray(vectors), model["dim"], f"shard {k}")
        schema = metadata_schema(items) if schema is None else schema
        shard = Shard(k, tuple(items))
        write_shard(out, shard, vectors, range(len(items)), [], schema)
        digests.append(shard.digest)
        count += len(items)
    plan = _plan(digests, count, schema or {}, model,
                 {"labels": labels, "path_column": "path", "shard_size": max(1, count // max(len(digests), 1))})
    write_durably(out / PLAN, json.dumps(plan, indent=2).encode())
    return plan


def read_plan(out: Path) -> dict[str, Any]:
    """The plan of an embeddings folder, checked: its shard count is that of its list of shards (a count edited to
    a billion would otherwise be walked shard by shard)."""
    try:
        plan = json.loads((out / PLAN).read_text())
    except FileNotFoundError:
        raise SimengineError(f"{out}: not an embeddings folder (no {PLAN}); make one with `simengine embed`") from None
    except ValueError as exc:
        raise SimengineError(f"{out / PLAN}: corrupt ({exc})") from exc
    plan = plan if isinstance(plan, dict) else {}
    model, source, digests = plan.get("model"), plan.get("source"), plan.get("shard_digests")
    if (not isinstance(digests, list) or type(plan.get("shards")) is not int or plan["shards"] != len(digests)
            or not isinstance(model, dict) or type(model.get("dim")) is not int or model["dim"] < 1
            or not isinstance(model.get("bundle_hash"), str) or not isinstance(plan.get("metadata_schema"), dict)
            or not isinstance(source, dict) or not {"labels", "path_column"} <= source.keys()):
        raise SimengineError(f"{out / PLAN}: not a plan `simengine embed` wrote (fields missing, or a shard count that "
                             "is not the length of its shard list); embed again into a new folder")
    return plan


def checked_vectors(vectors: np.ndarray, dim: int, where: str | os.PathLike, first_row: int = 0) -> np.ndarray:
    """`vectors` as native float32, converted from any float type and byte order; refused in one line naming
    `where` and the row (counted from `first_row`) when they are not rows of `dim` finite values of unit length, as
    embeddings are."""
    if vectors.ndim != 2 or vectors.shape[1] != dim or vectors.dtype.kind != "f":
        raise SimengineError(f"{where}: {vectors.dtype} array of shape {vectors.shape}; embeddings are floats of shape "
                             f"(rows, {dim})")
    with np.errstate(over="ignore"):  # float64 values past float32's range: refused below, by name
        converted = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(converted, axis=1)
    bad = ~(np.abs(norms - 1) <= NORM_TOLERANCE)  # NaN compares false: refused too
    if bad.any():
        row = int(np.argmax(bad))
        what = ("NaN or infinite values" if not np.isfinite(vectors[row]).all()
                else "values beyond float32's range" if not np.isfinite(converted[row]).all()
                else f"length {norms[row]:.6g}, not 1")
        raise SimengineError(f"{where}: row {first_row + row} has {what}; embeddings are L2-normalised vectors")
    return converted


def check_shard_vectors(out: Path, k: int, dim: int) -> int:
    """The number of vectors in shard k, after checking all of them (`checked_vectors`), a slice at a time."""
    path = embedding_path(out, k)
    try:
        vectors = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise SimengineError(f"{path}: not a NumPy array file ({exc})") from None
    if not isinstance(vectors, np.ndarray):  # a zip of arrays (.npz) under the .npy name
        vectors.close()
        raise SimengineError(f"{path}: not a NumPy array file (a zip of arrays)")
    checked_vectors(vectors[:0] if vectors.ndim == 2 else vectors, dim, path)  # shape and type, of an empty one too
    for start in range(0, len(vectors), CHECK_ROWS):
        checked_vectors(vectors[start:start + CHECK_ROWS], dim, path, start)
    return len(vectors)


def write_shard(out: Path, shard: Shard, vectors: np.ndarray, embedded: Sequence[int],
                failed: Sequence[tuple[int, str]], schema: dict[str, str]) -> None:
    """Store the vectors of `shard.items[i]` for i in `embedded` (row by row) and the reasons of the failed ones;
    the metadata file, written last, marks the shard finished and names the hash of the vectors it goes with (an
    attempt that died between the two files never pairs its vectors with another attempt's rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from simengine.files import write_durably

    if len(vectors) != len(embedded):
        raise ValueError(f"{len(vectors)} vectors for {len(embedded)} images")
    items = [shard.items[i] for i in embedded]
    columns: dict[str, list] = {"image_path": [str(i.path) for i in items], "sha256": [i.sha256 for i in items],
                                "label": [i.label for i in items]}
    fields = [pa.field("image_path", pa.string()), pa.field("sha256", pa.string()), pa.field("label", pa.string())]
    for key, kind in schema.items():
        if key in columns:
            continue  # a source column named like ours: ours wins
        values = [i.metadata.get(key) for i in items]
        columns[key] = [None if v is None else str(v) for v in values] if kind == "string" else values
        fields.append(pa.field(key, getattr(pa, kind)()))
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vectors, dtype=np.float32))
    table = pa.table(columns, schema=pa.schema(fields)).replace_schema_metadata(
        {VECTORS_SHA256: hashlib.sha256(buffer.getvalue()).hexdigest()})  # built first: a bad value writes nothing
    write_durably(embedding_path(out, shard.k), buffer.getvalue())
    write_durably(failed_path(out, shard.k), json.dumps(
        [{"path": str(shard.items[i].path), "reason": reason} for i, reason in failed], indent=1).encode())
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_durably(metadata_path(out, shard.k), sink.getvalue().to_pybytes())


def iter_shards(out: Path) -> Iterator[tuple[int, np.ndarray, list[dict[str, Any]]]]:
    """(k, vectors memory-mapped, metadata rows) of every finished shard, in order: one shard in memory at a time."""
    import pyarrow.parquet as pq

    plan = read_plan(out)
    for k in range(plan["shards"]):
        if not is_finished(out, k):
            continue
        vectors = np.load(embedding_path(out, k), mmap_mode="r")
        rows = pq.read_table(metadata_path(out, k)).to_pylist()
        if len(rows) != len(vectors):
            raise SimengineError(f"{metadata_path(out, k)}: {len(rows)} rows for {len(vectors)} vectors")
        yield k, vectors, rows


def failures(out: Path, k: int) -> list[dict[str, str]]:
    try:
        return json.loads(failed_path(out, k).read_text())
    except (OSError, ValueError):
        return []
