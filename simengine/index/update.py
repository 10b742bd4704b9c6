"""Changing an index: add images, remove items, recalibrate, compact, collect garbage; each is one new version.

Slow work (embedding) happens before the writer lock is taken; under the lock only the commit runs, and
duplicates are checked again there, so concurrent writers never lose or double an item.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from simengine.data.decode import not_a_file_reason
from simengine.data.evalsets import read_csv, read_labels_csv
from simengine.data.folders import Item
from simengine.data.labels import with_known_name
from simengine.data.sources import scan_source
from simengine.errors import SimengineError
from simengine.evaluation.decisions import Calibration
from simengine.files import sha256_file
from simengine.index.calibrate import calibrate_from_examples, calibrate_index
from simengine.index.embedding import AddReport, embed_items, item_rows, unique_by_content
from simengine.index.items import ID_PREFIX, label_counts, labelled, live_ids_by_sha, parse_id
from simengine.index.model_link import require_model
from simengine.index.reader import Index
from simengine.model.bundle import Model, load_bundle
from simengine.store import rows as store_rows
from simengine.store.layout import GRACE_S, StoreDir
from simengine.store.lock import DEFAULT_TIMEOUT_S
from simengine.store.writer import StoreWriter


def _model_for(store: StoreDir, manifest: dict, model: Model | None) -> Model:
    return model or load_bundle(store.attached_dir(manifest))


def labels_from_folders(manifest: dict, has_labels: bool) -> bool:
    """Whether an index's labels are its files' folder names, as its build recorded; for an index built before that
    was recorded: from an ImageFolder dataset or with `--labels folders`, or, where the build recorded no source
    (items given from Python, embeddings), whenever it has labels. Never when they came from a table's column."""
    built = manifest.get("build") or {}
    if "folder_labels" in built:
        return bool(built["folder_labels"])
    if "data" in built:
        return True
    if "labels" not in built or built.get("source_kind") == "embeddings":
        return has_labels
    labels = built.get("labels") or "auto"
    return labels == "folders" or (labels == "auto" and built.get("source_kind") == "imagefolder")


def add_images(index_dir: str | os.PathLike, paths: Sequence[str | os.PathLike], label: str | None = None,
               split: str | None = None, model: Model | None = None, progress: bool = False,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> AddReport:
    """Embed image files (a folder: every image under it) and add them as one new version. Files already indexed
    (same content) are skipped, bad ones reported. The label is `label`; else, where the index's labels are folder
    names (see `labels_from_folders`), the name of the file's folder; else none."""
    index_dir = Path(index_dir)
    store = StoreDir(index_dir)
    version = store.current_version()
    manifest = store.read_manifest(version)
    model = _model_for(store, manifest, model)
    require_model(manifest, model, index_dir)
    report = AddReport()
    found = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            collection = scan_source(path, "none", progress=progress)
            report.failed.extend(collection.skipped)
            found.extend(collection.items)
        elif why := not_a_file_reason(path):
            report.failed.append((str(path), f"{path}: {why}"))
        else:
            found.append(Item.from_file(path))
    # Skip embedding what is already indexed; the rows are enough (loading the vectors would cost the collection).
    with contextlib.closing(store_rows.connect(index_dir)) as conn:
        by_folder = label is None and labels_from_folders(
            manifest, any(value is not None for value in label_counts(conn, version)))
        # An index built before labels were names keeps a known code as it is, as its sync does.
        name = with_known_name if (manifest.get("build") or {}).get("label_names") else (lambda item: item)
        items = [name(dataclasses.replace(item, label=item.path.parent.name, split=split)) if by_folder
                 else dataclasses.replace(item, label=label, split=split) for item in found]
        items = unique_by_content(items, report)
        known = live_ids_by_sha(conn, version, [i.sha256 for i in items])
    report.duplicates.extend((str(i.path), known[i.sha256]) for i in items if i.sha256 in known)
    vectors, kept, failed = embed_items(model, [i for i in items if i.sha256 not in known], progress)
    report.failed.extend(failed)
    if not kept:
        return report
    with StoreWriter(index_dir, timeout_s) as writer:
        require_model(writer.base, model, index_dir)  # a rebuild with another model may have committed meanwhile
        # Another writer may have added some of these since the snapshot above.
        now_known = writer.live_ids_by("sha256", [i.sha256 for i in kept])
        fresh = [n for n, i in enumerate(kept) if i.sha256 not in now_known]
        report.duplicates.extend((str(i.path), now_known[i.sha256]) for i in kept if i.sha256 in now_known)
        if fresh:
            report.added = writer.add(vectors[fresh], item_rows([kept[n] for n in fresh]))
            writer.commit(f"add {len(fresh)}")
    return report


def remove_items(index_dir: str | os.PathLike, refs: Sequence[str | int],
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> list[int]:
    """Remove items by id (an int, or digits that name no file here) or by path, as one new version; their ids are
    never given out again."""
    with StoreWriter(index_dir, timeout_s) as writer:
        ids = set()
        for ref in refs:
            if isinstance(ref, int):
                ids.add(ref)
                continue
            ref = str(ref)
            if ref.isdigit() and not Path(ref).exists():
                ids.add(int(ref))
                continue
            found = writer.live_ids_with("path", str(Path(ref).resolve()))
            if not found:
                raise SimengineError(f"{ref}: not in the index")
            ids.update(found)
        writer.remove(sorted(ids))
        writer.commit(f"remove {len(ids)}")
    return sorted(ids)


def recalibrate_index(index_dir: str | os.PathLike, target_far: float | None = None, seed: int = 0,
                      model: Model | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Calibration:
    """Calibrate the thresholds again on the index's labelled items, as one new version."""
    index_dir = Path(index_dir)
    with StoreWriter(index_dir, timeout_s) as writer:
        snapshot = Index(index_dir)
        try:
            model = _model_for(snapshot.store, snapshot.manifest, model)
            require_model(snapshot.manifest, model, index_dir)
            rows = labelled(snapshot.conn, snapshot.version)
            calibration = calibrate_index(rows, snapshot.vectors([r["id"] for r in rows]), model, target_far, seed)
        finally:
            snapshot.close()
        writer.set_metadata(calibration=calibration.to_dict())
        writer.commit("calibrate")
    return calibration


@dataclasses.dataclass
class ExampleCalibration:
    """What `calibrate_with_examples` did: the thresholds, how many labelled pairs and items they stand on, and the
    rows that could not be used (one message each)."""

    calibration: Calibration
    pairs: int
    items: int
    skipped: list[str]


def calibrate_with_examples(index_dir: str | os.PathLike, pairs: str | os.PathLike | None = None,
                            labels: str | os.PathLike | None = None, target_far: float | None = None, seed: int = 0,
                            model: Model | None = None, progress: bool = False,
                            timeout_s: float = DEFAULT_TIMEOUT_S) -> ExampleCalibration:
    """Calibrate an index's thresholds from a few labelled examples, as one new version: a CSV of labelled pairs
    (`img1,img2,label`, 1 = same class) and/or of labelled images (`image,label`), each image a path (relative to
    its CSV) or `id:N`. An indexed file (same content) uses its stored vector, any other is embedded; rows that
    cannot be used are skipped and listed. See `index.calibrate.calibrate_from_examples`."""
    if pairs is None and labels is None:
        raise SimengineError("give labelled pairs, labelled images, or both")
    index_dir = Path(index_dir)
    pair_rows, skipped = read_csv(pairs, 2) if pairs is not None else ([], [])
    skipped += [f"{pairs}:{r.line}: no label (0 or 1) to calibrate on" for r in pair_rows if r.label is None]
    pair_rows = [r for r in pair_rows if r.label is not None]
    item_rows_, bad = read_labels_csv(labels) if labels is not None else ([], [])
    skipped += bad
    snapshot = Index(index_dir)
    try:
        model = _model_for(snapshot.store, snapshot.manifest, model)
        require_model(snapshot.manifest, model, index_dir)
        vectors, errors = example_vectors(snapshot, model, [str(i) for r in pair_rows + item_rows_ for i in r.images],
                                          progress)
        base = Calibration.from_dict(snapshot.manifest["calibration"])
    finally:
        snapshot.close()
    usable = []
    for row, csv_file in [(r, pairs) for r in pair_rows] + [(r, labels) for r in item_rows_]:
        failed = [errors[str(i)] for i in row.images if str(i) in errors]
        if failed:
            skipped.append(f"{csv_file}:{row.line}: {failed[0]}")
        else:
            usable.append(row)
    good_pairs = [r for r in usable if len(r.images) == 2]
    good_items = [r for r in usable if len(r.images) == 1]
    pair_vectors = (np.stack([vectors[str(r.images[0])] for r in good_pairs]),
                    np.stack([vectors[str(r.images[1])] for r in good_pairs]),
                    np.array([r.label for r in good_pairs])) if good_pairs else None
    item_vectors = (np.stack([vectors[str(r.images[0])] for r in good_items]),
                    [r.label for r in good_items]) if good_items else None
    source = " and ".join(f"{what} from {Path(f).name}" for what, f in
                          (("labelled pairs", pairs), ("labelled images", labels)) if f is not None)
    calibration = calibrate_from_examples(model, base, pair_vectors, item_vectors, source, target_far, seed)
    with StoreWriter(index_dir, timeout_s) as writer:
        require_model(writer.base, model, index_dir)  # a rebuild with another model may have committed meanwhile
        writer.set_metadata(calibration=calibration.to_dict())
        writer.commit("calibrate from examples")
    return ExampleCalibration(calibration, len(good_pairs), len(good_items), skipped)


def example_vectors(index: Index, model: Model, refs: Sequence[str],
                    progress: bool = False) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """({ref: vector}, {ref: why not}) for `id:N` references and image paths: an indexed item's stored vector (a file
    by its content), else the model's embedding of the file."""
    vectors, errors, files = {}, {}, []
    for ref in dict.fromkeys(refs):
        try:
            if ref.startswith(ID_PREFIX):
                item_id = parse_id(ref)
                index.item(item_id)
                vectors[ref] = index.vectors([item_id])[0]
            elif why := not_a_file_reason(ref):
                errors[ref] = f"{ref}: {why}"
            else:
                files.append(ref)
        except SimengineError as exc:
            errors[ref] = str(exc)
    shas = {f: sha256_file(f) for f in files}
    known = live_ids_by_sha(index.conn, index.version, list(shas.values()))
    new = [f for f in files if shas[f] not in known]
    for f in files:
        if shas[f] in known:
            vectors[f] = index.vectors([known[shas[f]]])[0]
    if new:
        result = model.embed_paths(new, progress=progress)
        for row, i in enumerate(result.ok):
            vectors[new[i]] = result.vectors[row]
        for i, _, reason in result.failed:
            errors[new[i]] = reason
    return vectors, errors


def compact_index(index_dir: str | os.PathLike, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Merge all segments into one without removed vectors (cost: the whole collection, once)."""
    with StoreWriter(index_dir, timeout_s) as writer:
        writer.compact()
        return writer.commit("compact")


def collect_garbage(index_dir: str | os.PathLike, grace_s: float = GRACE_S,
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, int]:
    """Delete versions replaced more than `grace_s` ago and files and rows that no kept version uses."""
    with StoreWriter(index_dir, timeout_s, grace_s=grace_s) as writer:
        return writer.collect_garbage()
