"""Index directories: FAISS vectors + SQLite metadata + manifest + the model bundle, swapped in atomically."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simengine import vectors as vec
from simengine.backbones import sha256_file
from simengine.bundle import Model, load_bundle, require_same_encoder
from simengine.data import sha256_bytes
from simengine.decision import Calibration, calibrate_decisions
from simengine.errors import IndexUnusableError, SimengineError
from simengine.images import image_size

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST, VECTORS, ITEMS, MODEL = "manifest.json", "vectors.faiss", "items.db", "model"
DEFAULT_ROOT = Path("indexes")
MIN_HOLDOUT = 30  # fewer held-out items than this and calibration falls back to all indexed items


def resolve_index_dir(index: str | os.PathLike | None = None, root: Path = DEFAULT_ROOT) -> Path:
    """--index DIR, else indexes/default, else the only index under indexes/."""
    if index is not None:
        path = Path(index)
        if not (path / MANIFEST).is_file():
            raise IndexUnusableError(f"{path}: no index here (no {MANIFEST})")
        return path
    if (root / "default" / MANIFEST).is_file():
        return root / "default"
    found = [p for p in sorted(root.glob("*")) if not p.name.startswith(".") and (p / MANIFEST).is_file()] if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise IndexUnusableError(f"no index found under {root}/: build one with `simengine index build`")
    raise IndexUnusableError(f"several indexes under {root}/ ({', '.join(p.name for p in found)}): choose one with --index")


@dataclass
class ItemRecord:
    path: str
    label: str | None
    split: str | None
    sha256: str


@dataclass
class AddReport:
    """What an add did: new ids, duplicates skipped (path, existing id), and files that failed (path, reason)."""

    added: list[int] = field(default_factory=list)
    duplicates: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _versioned_write(link: Path, populate, base: Path | None = None) -> Path:
    """Fill a fresh version directory (a copy of `base` when given) and atomically point `link` at it.

    A crash at any moment leaves `link` pointing at the previous, complete version.
    """
    link = Path(link)
    if link.exists() and not link.is_symlink():
        raise IndexUnusableError(f"{link} exists and is not a simengine index link; choose another --out")
    link.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    new = link.parent / f".{link.name}.{stamp}-{secrets.token_hex(3)}"
    if base is not None:
        # The model bundle never changes after a build: hard-link it instead of copying.
        shutil.copytree(base, new, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(VECTORS, ITEMS, MANIFEST))
        for name in (VECTORS, ITEMS):
            shutil.copy2(base / name, new / name)
    else:
        new.mkdir()
    try:
        populate(new)
        for f in new.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = link.resolve() if link.is_symlink() else None
        tmp_link = link.parent / f".{link.name}.link-{secrets.token_hex(3)}"
        os.symlink(new.name, tmp_link)
        os.replace(tmp_link, link)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if old is not None and old != new and old.parent == link.parent:
        shutil.rmtree(old, ignore_errors=True)
    return link


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _items_db(path: Path):
    import sqlite_utils

    db = sqlite_utils.Database(path)
    if "items" not in db.table_names():
        db["items"].create(
            {"id": int, "path": str, "class": str, "split": str, "sha256": str, "width": int, "height": int,
             "added_at": str},
            pk="id",
        )
        db["items"].create_index(["sha256"], unique=True)
        db["items"].create_index(["path"])
        db["tombstones"].create({"id": int, "removed_at": str}, pk="id")
        db["build"].create({"key": str, "value": str}, pk="key")
    return db


def _embed_items(model: Model, records: list[ItemRecord], progress: bool):
    """Embeddings for records through the feature cache; returns (vectors, kept records, failures)."""
    from simengine.features import FeatureCache

    cache = FeatureCache(model.encoder, flip=model.flip)
    features, failed = cache.features([r.path for r in records], [r.sha256 for r in records], progress=progress)
    keep = np.flatnonzero(~np.isnan(features).any(axis=1))
    emb = model.embed_features(features[keep]) if len(keep) else np.zeros((0, model.dim), np.float32)
    return emb, [records[i] for i in keep], [(path, reason) for _, path, reason in failed]


class Index:
    """An open index: FAISS vectors, SQLite items, manifest and the model that embedded them."""

    def __init__(self, link: Path, model: Model | None = None, runtime: str = "auto", check: bool = True):
        """Open an index; with `check`, refuse one whose files, counts or model disagree with its manifest."""
        import faiss

        self.link = Path(link)
        self.dir = self.link.resolve()
        manifest_path = self.dir / MANIFEST
        if not manifest_path.is_file():
            raise IndexUnusableError(f"{self.link}: no index here (no {MANIFEST})")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise IndexUnusableError(f"{manifest_path}: corrupt ({exc})") from exc
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise IndexUnusableError(
                f"{self.link}: index format {self.manifest.get('format_version')!r}, this simengine reads {FORMAT_VERSION}; rebuild it"
            )
        if check:
            self._check_files_cheaply()
        self.model = model or load_bundle(self.dir / MODEL, runtime)
        if check:
            require_same_encoder(self.manifest["model"]["encoder"], self.model.config["encoder"], f"index {self.link}")
        if check and self.model.hash != self.manifest["model"]["hash"]:
            raise IndexUnusableError(f"{self.link}: the index was built with model {self.manifest['model']['hash'][:12]}, "
                                     f"the model here is {self.model.hash[:12]}")
        try:
            self.faiss = faiss.read_index(str(self.dir / VECTORS))
        except RuntimeError as exc:
            raise IndexUnusableError(f"{self.dir / VECTORS}: corrupt FAISS file") from exc
        self.db = _items_db(self.dir / ITEMS)
        self.tombstones = {row["id"] for row in self.db["tombstones"].rows}
        n_items = self.db["items"].count
        if check and (self.faiss.ntotal != n_items + len(self.tombstones) or self.faiss.d != self.manifest["dim"]):
            raise IndexUnusableError(
                f"{self.link}: FAISS holds {self.faiss.ntotal} vectors of dim {self.faiss.d}, SQLite {n_items} items "
                f"+ {len(self.tombstones)} removed; run `simengine index verify`"
            )

    def _check_files_cheaply(self) -> None:
        for name, size in self.manifest["files"].items():
            path = self.dir / name
            if not path.is_file():
                raise IndexUnusableError(f"{self.link}: {name} is missing")
            if path.stat().st_size != size["bytes"]:
                raise IndexUnusableError(f"{self.link}: {name} is {path.stat().st_size} bytes, the manifest says {size['bytes']}")

    @property
    def calibration(self) -> Calibration:
        return Calibration.from_dict(self.manifest["calibration"])

    def __len__(self) -> int:
        return self.db["items"].count

    # --- reading -------------------------------------------------------------------------------------------------

    def item(self, item_id: int) -> dict[str, Any]:
        import sqlite_utils

        try:
            return dict(self.db["items"].get(int(item_id)))
        except sqlite_utils.db.NotFoundError:
            raise SimengineError(f"no item with id {item_id} in {self.link}") from None

    def items(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        return {row["id"]: row for row in self.db.query(f"SELECT * FROM items WHERE id IN ({marks})", ids)}

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        return self.faiss.reconstruct_batch(np.asarray(ids, np.int64))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids) of the k nearest live items per query; removed items never appear (-1 pads)."""
        live = len(self)
        k_eff = min(k, live)
        fetch = min(self.faiss.ntotal, k_eff + len(self.tombstones))
        if fetch == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        sims, ids = self.faiss.search(np.ascontiguousarray(queries, np.float32), fetch)
        out_s = np.full((len(queries), k_eff), -np.inf, np.float32)
        out_i = np.full((len(queries), k_eff), -1, np.int64)
        for row in range(len(queries)):
            keep = [(s, i) for s, i in zip(sims[row], ids[row]) if i >= 0 and int(i) not in self.tombstones][:k_eff]
            for col, (s, i) in enumerate(keep):
                out_s[row, col], out_i[row, col] = s, i
        return out_s, out_i

    def info(self) -> dict[str, Any]:
        classes = {row["class"]: row["n"] for row in self.db.query("SELECT class, count(*) AS n FROM items GROUP BY class")}
        size = sum(f.stat().st_size for f in self.dir.rglob("*") if f.is_file())
        cal = self.manifest["calibration"]
        return {
            "path": str(self.link),
            "items": len(self),
            "removed": len(self.tombstones),
            "classes": classes,
            "backbone": self.manifest["model"]["encoder"]["backbone"],
            "weights": self.manifest["model"]["encoder"]["weights_source"],
            "model_hash": self.manifest["model"]["hash"],
            "runtime": self.model.runtime,
            "index_type": self.manifest["index_type"],
            "dim": self.manifest["dim"],
            "decision": cal["default"],
            "pair_threshold": cal["pair"][cal["default"]]["value"],
            "triplet_threshold": cal["triplet"][cal["default"]]["value"],
            "calibration_cv_accuracy": cal["pair"][cal["default"]]["cv_accuracy"],
            "calibrated_on": cal["source"],
            "size_bytes": size,
            "created_at": self.manifest["created_at"],
            "updated_at": self.manifest["updated_at"],
        }

    def verify(self) -> list[str]:
        """Every inconsistency found, as precise messages; an empty list means the index is sound."""
        problems = []
        if self.faiss.d != self.manifest["dim"]:
            problems.append(f"FAISS dimension {self.faiss.d}, the manifest says {self.manifest['dim']}")
        for name, rec in self.manifest["files"].items():
            if sha256_file(self.dir / name) != rec["sha256"]:
                problems.append(f"{name}: sha256 differs from the manifest")
        faiss_ids = set(vec.ids_of(self.faiss).tolist())
        sql_ids = {row["id"] for row in self.db.query("SELECT id FROM items")}
        if missing := sql_ids - faiss_ids:
            problems.append(f"{len(missing)} SQLite items have no vector (ids {sorted(missing)[:10]})")
        if orphans := faiss_ids - sql_ids - self.tombstones:
            problems.append(f"{len(orphans)} vectors have no SQLite item (ids {sorted(orphans)[:10]})")
        if both := sql_ids & self.tombstones:
            problems.append(f"{len(both)} items are both live and removed (ids {sorted(both)[:10]})")
        if self.manifest["counts"]["items"] != len(sql_ids):
            problems.append(f"manifest counts {self.manifest['counts']['items']} items, SQLite has {len(sql_ids)}")
        if self.model.hash != self.manifest["model"]["hash"]:
            problems.append("the model bundle's hash differs from the manifest's")
        if self.model.config["encoder"] != self.manifest["model"]["encoder"]:
            problems.append("the model's encoder differs from the one recorded in the manifest")
        return problems

    # --- writing (each makes a new version and swaps it in) -------------------------------------------------------

    def add(self, paths: Sequence[str | os.PathLike], label: str | None = None, split: str | None = None,
            progress: bool = False) -> AddReport:
        """Embed and add images; duplicates (by sha256) are skipped and bad files reported."""
        report = AddReport()
        records, seen = [], {}
        existing = {row["sha256"]: row["id"] for row in self.db.query("SELECT id, sha256 FROM items")}
        for p in paths:
            path = Path(p)
            if not path.is_file():
                report.failed.append((str(path), "no such file"))
                continue
            sha = sha256_bytes(path)
            if sha in existing or sha in seen:
                report.duplicates.append((str(path), existing.get(sha, -1)))
                continue
            seen[sha] = True
            records.append(ItemRecord(str(path.resolve()), label if label is not None else path.parent.name, split, sha))
        emb, kept, failed = _embed_items(self.model, records, progress)
        report.failed.extend(failed)
        if not kept:
            return report
        start = int(max(vec.ids_of(self.faiss).max(initial=-1), -1)) + 1
        ids = np.arange(start, start + len(kept), dtype=np.int64)

        def populate(folder: Path) -> None:
            index = self._read_faiss(folder)
            vec.add(index, emb, ids)
            _write_rows(folder, kept, ids)
            _finish(folder, index, self.manifest)

        self._swap(populate)
        report.added = ids.tolist()
        return report

    def remove(self, refs: Sequence[str | int]) -> list[int]:
        """Remove items by id or path; they never appear in results again (HNSW keeps the vector as a tombstone)."""
        ids = []
        for ref in refs:
            ref = str(ref)
            if ref.lstrip("-").isdigit() and not Path(ref).exists():
                ids.append(int(self.item(int(ref))["id"]))
                continue
            rows = list(self.db.query("SELECT id FROM items WHERE path = ?", [str(Path(ref).resolve())]))
            if not rows:
                raise SimengineError(f"{ref}: not in the index")
            ids.extend(r["id"] for r in rows)
        ids = sorted(set(ids))

        def populate(folder: Path) -> None:
            index = self._read_faiss(folder)
            db = _items_db(folder / ITEMS)
            for i in ids:
                db["items"].delete(i)
            if vec.supports_remove(index):
                index.remove_ids(np.asarray(ids, np.int64))
            else:
                db["tombstones"].insert_all([{"id": i, "removed_at": _now()} for i in ids])
            _finish(folder, index, self.manifest)

        self._swap(populate)
        return ids

    def recalibrate(self, target_far: float | None = None, seed: int = 0) -> Calibration:
        """Calibrate thresholds again on this index's held-out items; writes a new version."""
        calibration = calibrate_index(self.faiss, self.db, self.model, target_far, seed)

        def populate(folder: Path) -> None:
            manifest = dict(self.manifest, calibration=calibration.to_dict())
            _finish(folder, self._read_faiss(folder), manifest)

        self._swap(populate)
        return calibration

    def _read_faiss(self, folder: Path):
        import faiss

        return faiss.read_index(str(folder / VECTORS))

    def _swap(self, populate) -> None:
        _versioned_write(self.link, populate, base=self.dir)
        # The new version hard-links the same model files, so the loaded model is reused.
        self.__init__(self.link, model=self.model)


def verify_index(link: str | os.PathLike) -> list[str]:
    """Open without the cheap checks and list every problem; an index that cannot even be opened is one problem."""
    try:
        return Index(Path(link), check=False).verify()
    except SimengineError as exc:
        return [str(exc)]


def _write_rows(folder: Path, records: list[ItemRecord], ids: np.ndarray) -> None:
    rows = []
    for r, i in zip(records, ids):
        width, height = image_size(r.path)
        rows.append({"id": int(i), "path": r.path, "class": r.label, "split": r.split, "sha256": r.sha256,
                     "width": width, "height": height, "added_at": _now()})
    _items_db(folder / ITEMS)["items"].insert_all(rows)


def _finish(folder: Path, index, manifest: dict[str, Any]) -> None:
    """Write the FAISS file and a manifest whose counts and file hashes describe `folder`."""
    import faiss

    faiss.write_index(index, str(folder / VECTORS))
    db = _items_db(folder / ITEMS)
    manifest = dict(manifest)
    manifest["counts"] = {"items": db["items"].count, "removed": db["tombstones"].count, "vectors": int(index.ntotal)}
    manifest["files"] = {name: {"bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
                         for name in (VECTORS, ITEMS)}
    manifest["updated_at"] = _now()
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, folder / MANIFEST)


def calibrate_index(index, db, model: Model, target_far: float | None = None, seed: int = 0) -> Calibration:
    """Thresholds from balanced pairs/triplets over indexed items the model held out in training (else all items)."""
    holdout = set(model.config.get("holdout_sha256", []))
    rows = [r for r in db.query("SELECT id, class, sha256 FROM items WHERE class IS NOT NULL")]
    held = [r for r in rows if r["sha256"] in holdout]
    source = "indexed items held out from training"
    if len(held) < MIN_HOLDOUT or len({r["class"] for r in held}) < 3:
        log.warning("fewer than %d indexed items were held out from training: calibrating on all indexed items, "
                    "which may overlap the training data", MIN_HOLDOUT)
        held, source = rows, "all indexed items (may overlap training data)"
    if len(held) < 6 or len({r["class"] for r in held}) < 3:
        log.warning("too few labelled items to calibrate; keeping the model's own calibration")
        return model.calibration
    emb = index.reconstruct_batch(np.array([r["id"] for r in held], np.int64))
    return calibrate_decisions(emb, [r["class"] for r in held], model.pair_logits, source, target_far=target_far, seed=seed)


def build_index(
    records: list[ItemRecord], model: Model, model_dir: Path, out: str | os.PathLike, index_type: str = "auto",
    target_far: float | None = None, progress: bool = False, seed: int = 0, build_info: dict | None = None,
) -> tuple[Path, AddReport]:
    """Embed `records`, write FAISS + SQLite + manifest + a copy of the model into a new version of `out`."""
    report = AddReport()
    unique, first_of = [], {}
    for r in records:
        if r.sha256 in first_of:
            report.duplicates.append((r.path, -1))
            continue
        first_of[r.sha256] = r
        unique.append(r)
    started = time.time()
    emb, kept, report.failed = _embed_items(model, unique, progress)
    if not kept:
        raise SimengineError("no image could be embedded; nothing to index")
    ids = np.arange(len(kept), dtype=np.int64)
    kind = vec.choose_type(len(kept), index_type)
    log.info("index type %s for %d vectors", kind, len(kept))

    def populate(folder: Path) -> None:
        shutil.copytree(model_dir, folder / MODEL)
        index = vec.build(emb, ids, kind, seed)
        _write_rows(folder, kept, ids)
        db = _items_db(folder / ITEMS)
        calibration = calibrate_index(index, db, model, target_far, seed)
        info = dict(build_info or {}, embed_and_build_seconds=round(time.time() - started, 1),
                    duplicates=len(report.duplicates), failed=len(report.failed))
        db["build"].insert_all([{"key": k, "value": json.dumps(v)} for k, v in info.items()], replace=True)
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_at": _now(),
            "model": {"hash": model.hash} | {k: v for k, v in model.config.items() if k not in ("holdout_sha256", "calibration")},
            "dim": int(emb.shape[1]),
            "metric": "inner_product (cosine on L2-normalised vectors)",
            "index_type": kind,
            "calibration": calibration.to_dict(),
        }
        _finish(folder, index, manifest)

    link = _versioned_write(Path(out), populate)
    report.added = ids.tolist()
    return link, report
