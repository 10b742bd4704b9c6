"""`simengine dedup`: exact and near-duplicate images within a collection, or between it and another collection or
an index.

1. Exact duplicates: equal content hashes (sha256 of the bytes).
2. Candidates: one image per content hash, searched by backbone features (`near.near_pairs`, k nearest above the
   lowest backbone cosine the same-picture decision can accept).
3. Verification: the candidates' layout descriptors, and the same-picture decision stored with the model
   (`dedup.calibrate`), whole or restricted to the kinds of copies asked for (`groups.COPY_KINDS`: "exact" stops at 1).
4. Groups: stars around a keeper (`dedup.groups`), so chains never join unrelated images; exact copies join their
   representative's group.

With `against`, only pairs across the two sets are reported: each image of the source joins the group of its best
match in the other set, which is always the keeper (the catalogue is never what gets moved).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from simengine.data.decode import image_size
from simengine.dedup.calibrate import SamePicture, read_same_picture
from simengine.dedup.groups import KEEP_RULES, ORIGINAL_SUFFIXES, Candidate, exact_groups, group_duplicates
from simengine.dedup.near import NEIGHBOURS, near_pairs
from simengine.dedup.verify import PairVerifier
from simengine.errors import NotCalibratedError, SimengineError
from simengine.evaluation.metrics import normalise
from simengine.model.builtin import default_model_dir, resolve_model_dir
from simengine.store.layout import is_index_dir

if TYPE_CHECKING:
    from simengine.model.bundle import Model
    from simengine.store.reader import StoreReader

EXACT = (1.0, 1.0, None)  # the signals of a byte-identical copy


@dataclass(frozen=True)
class ReportedImage:
    """One image as a report shows it."""

    path: str
    sha256: str
    origin: str  # "source", or "against" for the other set
    item_id: int | None = None  # its id, when the other set is an index


@dataclass
class Member:
    """A duplicate in a group, with its signals to the keeper. A byte-identical copy of another member is that
    member again: it gets the member's kind ("near") and signals."""

    image: ReportedImage
    kind: str  # "exact" (the keeper's bytes) or "near"
    backbone: float  # cosine of backbone features
    layout: float  # cosine of layout descriptors
    matches: int | None = None  # agreeing keypoint matches; None when the layout decided (or exact bytes)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.image.path, "origin": self.image.origin, "item_id": self.image.item_id,
                "kind": self.kind, "backbone": round(self.backbone, 4), "layout": round(self.layout, 4),
                "matches": self.matches}


@dataclass
class DuplicateGroup:
    keeper: ReportedImage
    duplicates: list[Member]

    def to_dict(self) -> dict[str, Any]:
        return {"keeper": {"path": self.keeper.path, "origin": self.keeper.origin, "item_id": self.keeper.item_id},
                "duplicates": [m.to_dict() for m in self.duplicates]}


@dataclass
class DuplicateReport:
    source: str
    against: str | None
    decision: SamePicture | None  # None when only byte-identical copies count
    model: str
    images: int  # found in the source (those that cannot be decoded are also in `skipped`)
    groups: list[DuplicateGroup] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path or line, reason)
    seconds: float = 0.0
    copies: str = "edited"  # which copies counted (`COPY_KINDS`)
    keep: str = "largest"  # the keeper rule (`KEEP_RULES`)

    @property
    def duplicate_count(self) -> int:
        return sum(len(g.duplicates) for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "against": self.against, "model": self.model, "copies": self.copies,
                "keep": self.keep, "decision": self.decision.to_dict() if self.decision else None,
                "images": self.images, "groups": len(self.groups),
                "duplicates": self.duplicate_count,
                "exact": sum(m.kind == "exact" for g in self.groups for m in g.duplicates),
                "seconds": round(self.seconds, 2), "duplicate_groups": [g.to_dict() for g in self.groups],
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}


def find_duplicates(source: str | os.PathLike, against: str | os.PathLike | None = None,
                    model_dir: str | os.PathLike | None = None, decision: SamePicture | None = None,
                    runtime: str = "auto", path_column: str = "path", k: int = NEIGHBOURS,
                    progress: bool = False, keep: str = "largest", copies: str = "edited") -> DuplicateReport:
    """Duplicate groups in `source` (a folder, a list of paths or a table, see `data.sources.scan_source`; or an
    index: its items, with no folder scanned again), or of `source` against `against` (an index directory or
    another source). The model is `model_dir`, else the index's when `source` or `against` is one, else the default
    model (see `model.builtin`; "builtin" names the built-in one); its stored
    same-picture decision is used unless `decision`
    is given. `copies` says which copies count (`dedup.calibrate.COPY_KINDS`: "exact" bytes only, "resized"
    without crops, rotations and overlays, or "edited", all the decision accepts). `keep` picks each group's keeper
    (see `dedup.groups.KEEP_RULES`; against another set, the keeper is always the other set's image). Unreadable
    files are reported in `skipped`, never fatal."""
    if keep not in KEEP_RULES:
        raise SimengineError(f"--keep must be one of {', '.join(KEEP_RULES)}, not {keep!r}")
    from simengine.data.sources import scan_source
    from simengine.model.bundle import load_bundle

    started = time.time()
    indexed = is_index_dir(source)
    model_dir = (resolve_model_dir(model_dir) if model_dir is not None else
                 _default_model(source if indexed else against))
    # Byte-identical copies need no model: none is loaded, and an uncalibrated one does not matter.
    decision = None if copies == "exact" else (decision or stored_decision(model_dir)).counting(copies)
    model = load_bundle(model_dir, runtime) if decision is not None else None
    if indexed:  # its live items, as they were hashed when indexed: no folder is scanned again
        images, skipped = _indexed_images(source, "source"), []
    else:
        collection = scan_source(source, "none", path_column=path_column, progress=progress)
        images, repeated = _once_each(ReportedImage(str(Path(i.path).absolute()), i.sha256, "source")
                                      for i in collection.items)
        skipped = list(collection.skipped) + repeated
    if not images:
        raise SimengineError(f"{source}: no images found" + (f" ({len(skipped)} entries skipped)" if skipped else ""))
    report = DuplicateReport(str(source), None if against is None else str(against), decision, str(model_dir),
                             len(images), skipped=skipped, copies=copies, keep=keep)
    folder = Path(source).resolve() if Path(source).is_dir() and not indexed else None
    search = _Search(model, decision, k, progress, folder, keep)
    if against is None:
        report.groups = search.within(images)
    else:
        others, skipped = _other_set(against, path_column, progress)
        report.skipped += skipped
        report.groups = search.across(images, others)
    report.skipped += search.skipped
    report.seconds = time.time() - started
    return report


def _once_each(images: Iterable[ReportedImage]) -> tuple[list[ReportedImage], list[tuple[str, str]]]:
    """Each file once: a link to a file, or a path listed twice, would otherwise be reported as its own duplicate
    (and `--move-to` would move the file it is a copy of)."""
    seen: set[str] = set()
    kept, repeated = [], []
    for image in images:
        if image.path in seen:
            repeated.append((image.path, f"{image.path}: the same file again (a link, or listed twice)"))
        else:
            seen.add(image.path)
            kept.append(image)
    return kept, repeated


def stored_decision(model_dir: str | os.PathLike) -> SamePicture:
    """The decision stored with a model bundle (a general twin's is its parent bundle's: they share the backbone)."""
    stored = read_same_picture(model_dir)
    if stored is None:
        raise NotCalibratedError(f"{model_dir} has no same-picture calibration (trained before simengine 0.3): run "
                                 f"`simengine dedup-calibrate --model {model_dir} --data DATASET`")
    return stored[0]


def copies_in_index(index: "StoreReader", model: "Model", image: bytes, name: str, k: int = NEIGHBOURS,
                    max_pixels: int | None = None) -> tuple[SamePicture, list[Member]]:
    """The decision and the indexed items that are copies of one image (the bytes of an upload), best first.
    Candidates are the image's k nearest items in the index's own embedding; their backbone features come from the
    feature cache (or their files), and the model's same-picture decision confirms them. Items whose files are gone
    are left out."""
    import hashlib

    from simengine.data.decode import WEB_FORMATS, load_rgb
    from simengine.dedup.keypoints import keypoints
    from simengine.dedup.layout import file_layout, layout_descriptor
    from simengine.store import rows as store_rows

    decision = stored_decision(model.path)
    picture = load_rgb(image, name=name, formats=WEB_FORMATS, **({"max_pixels": max_pixels} if max_pixels else {}))
    features = model.encoder.forward(model.encoder.load_image(image, name=name, formats=WEB_FORMATS)[None],
                                     flip=model.flip)
    query = normalise(features)[0]
    _, found = index.search(model.embed_features(features), k)
    exact = set(store_rows.live_ids_by(index.conn, index.version, "sha256", [hashlib.sha256(image).hexdigest()]).values())
    rows = index.items([int(i) for i in found[0] if i >= 0] + sorted(exact))
    members = [Member(ReportedImage(rows[i]["path"], rows[i]["sha256"], "index", i), "exact", *EXACT)
               for i in sorted(exact)]
    ids = [i for i in rows if i not in exact]
    candidate_features = _item_features(model, [rows[i] for i in ids])
    upload = object()  # the key of the uploaded picture among the items' ids
    verifier = PairVerifier(
        decision, lambda key: layout_descriptor(picture) if key is upload else file_layout(rows[key]["path"]),
        lambda key: keypoints(picture if key is upload else rows[key]["path"]))
    for n, item_id in enumerate(ids):
        if np.isnan(candidate_features[n]).any():
            continue
        backbone = float(normalise(candidate_features[n:n + 1])[0] @ query)
        verdict = verifier.verify(upload, item_id, backbone)
        if verdict is not None and verdict[0]:
            members.append(Member(ReportedImage(rows[item_id]["path"], rows[item_id]["sha256"], "index", item_id),
                                  "near", backbone, *verdict[1:]))
    return decision, sorted(members, key=lambda m: (m.kind != "exact", -m.backbone))


def _item_features(model: "Model", rows: list[dict[str, Any]]) -> np.ndarray:
    """Backbone features of indexed items (NaN rows for files gone): from the feature cache, or from the files when
    the cache cannot be opened (a read-only cache folder under a service account)."""
    import sqlite3

    from simengine.model.feature_cache import FeatureCache

    paths, shas = [r["path"] for r in rows], [r["sha256"] for r in rows]
    try:
        return FeatureCache(model.encoder, flip=model.flip).features(paths, shas)[0]
    except (OSError, sqlite3.Error):
        result = model.encoder.embed_paths(paths, flip=model.flip)
        out = np.full((len(rows), model.encoder.dim), np.nan, np.float32)
        out[result.ok] = result.vectors
        return out


def _indexed_images(index_dir: str | os.PathLike, origin: str) -> list[ReportedImage]:
    """The live items of an index, with the content hashes recorded when they were indexed."""
    from simengine.store import rows as store_rows
    from simengine.store.reader import StoreReader

    with StoreReader(index_dir) as index:
        rows = store_rows.live_rows(index.conn, index.version)
    return [ReportedImage(r["path"], r["sha256"], origin, int(r["id"])) for r in rows]


def _default_model(index_dir: str | os.PathLike | None) -> Path:
    """The model of `index_dir` when it is an index, else the default model."""
    if index_dir is not None and is_index_dir(index_dir):
        from simengine.store.reader import StoreReader

        with StoreReader(index_dir) as index:
            return index.attached_dir  # an index's attached directory is its model bundle
    return default_model_dir()


def _other_set(against: str | os.PathLike, path_column: str, progress: bool) -> tuple[list[ReportedImage], list[tuple[str, str]]]:
    """The images of an index (its live items) or of another source."""
    if is_index_dir(against):
        return _indexed_images(against, "against"), []
    from simengine.data.sources import scan_source

    collection = scan_source(against, "none", path_column=path_column, progress=progress)
    return [ReportedImage(str(Path(i.path).absolute()), i.sha256, "against") for i in collection.items], collection.skipped


class _Search:
    """Features, candidate pairs and verification for one run; images are numbered by their position."""

    def __init__(self, model: "Model | None", decision: SamePicture | None, k: int, progress: bool,
                 folder: Path | None, keep: str):
        from simengine.model.feature_cache import FeatureCache

        self.cache = FeatureCache(model.encoder, flip=model.flip) if model is not None else None
        self.decision, self.k, self.progress, self.folder, self.keep = decision, k, progress, folder, keep
        self.skipped: list[tuple[str, str]] = []

    def within(self, images: list[ReportedImage]) -> list[DuplicateGroup]:
        hash_counts = Counter(image.sha256 for image in images)
        candidates = {n: self._candidate(n, image) for n, image in enumerate(images) if hash_counts[image.sha256] > 1}
        exact = exact_groups(list(candidates.values()), {n: images[n].sha256 for n in candidates}, self.keep)
        copies_of = {g.keeper: g.duplicates for g in exact}
        exact_copies = {c for g in exact for c in g.duplicates}
        pairs = {}
        if self.decision is not None:
            vectors, rows = self._features(images, [n for n in range(len(images)) if n not in exact_copies])
            pairs = self._verified(images, near_pairs(vectors, rows, self.decision.min_backbone, self.k))
        for n in {n for pair in pairs for n in pair} - candidates.keys():
            candidates[n] = self._candidate(n, images[n])
        in_pairs = [candidates[n] for n in sorted({n for pair in pairs for n in pair})]
        groups, grouped = [], set()
        for group in group_duplicates(in_pairs, ((a, b, scores[0]) for (a, b), scores in pairs.items()), self.keep):
            keeper, members = group.keeper, []
            for n in group.members:
                scores = EXACT if n == keeper else pairs[min(n, keeper), max(n, keeper)]
                if n != keeper:
                    members.append(Member(images[n], "near", *scores))
                # an exact copy of a member is that member again, to the keeper
                members += [Member(images[c], "exact" if n == keeper else "near", *scores)
                            for c in copies_of.get(n, [])]
            grouped.update(group.members)
            groups.append(DuplicateGroup(images[keeper], members))
        groups += [DuplicateGroup(images[g.keeper], [Member(images[c], "exact", *EXACT) for c in g.duplicates])
                   for g in exact if g.keeper not in grouped]
        return sorted(groups, key=lambda g: g.keeper.path)

    def across(self, images: list[ReportedImage], others: list[ReportedImage]) -> list[DuplicateGroup]:
        in_other_set = {image.path for image in others}
        images = [image for image in images if image.path not in in_other_set]  # a file is no copy of itself
        offset = len(images)  # the other set's images are numbered after the source's
        everything = images + others
        first_with_hash: dict[str, int] = {}
        for n, image in enumerate(others):
            first_with_hash.setdefault(image.sha256, offset + n)
        best: dict[int, tuple[int, Member]] = {}  # source image -> (its keeper in the other set, as a member)
        for n, image in enumerate(images):
            if image.sha256 in first_with_hash:
                best[n] = (first_with_hash[image.sha256], Member(image, "exact", *EXACT))
        if self.decision is not None:
            query_vectors, query_rows = self._features(everything, [n for n in range(len(images)) if n not in best])
            base_vectors, base_rows = self._features(everything, list(first_with_hash.values()))
            found = near_pairs(query_vectors, query_rows, self.decision.min_backbone, self.k,
                               against=(base_vectors, base_rows))
            for (n, other), scores in self._verified(everything, found, ordered=True).items():
                if n not in best or scores[0] > best[n][1].backbone:
                    best[n] = (other, Member(images[n], "near", *scores))
        groups: dict[int, list[Member]] = {}
        for n, (other, member) in sorted(best.items()):
            groups.setdefault(other, []).append(member)
        return sorted((DuplicateGroup(everything[o], sorted(ms, key=lambda m: -m.backbone)) for o, ms in groups.items()),
                      key=lambda g: g.keeper.path)

    def _features(self, images: Sequence[ReportedImage], rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Unit backbone features of `images[rows]` through the feature cache, and the rows that decoded."""
        if not rows:
            return np.zeros((0, self.cache.encoder.dim), np.float32), np.zeros(0, np.int64)
        features, failed = self.cache.features([images[n].path for n in rows], [images[n].sha256 for n in rows],
                                               progress=self.progress)
        self.skipped += [(path, reason) for _, path, reason in failed]
        rows = np.asarray(rows, np.int64)
        if failed:
            ok = ~np.isnan(features).any(axis=1)
            features, rows = features[ok], rows[ok]
        features /= np.linalg.norm(features, axis=1, keepdims=True)  # in place: at 1M images each copy is 5 GB
        return features, rows

    def _verified(self, images: Sequence[ReportedImage], pairs: Iterable[tuple[int, int, float]],
                  ordered: bool = False) -> dict[tuple[int, int], tuple]:
        """{(a, b): (backbone cosine, layout cosine, agreeing matches or None)} of the candidate pairs the decision
        accepts, verified as the search yields them; keys are (smaller, larger) unless `ordered`."""
        from simengine.dedup.keypoints import keypoints
        from simengine.dedup.layout import file_layout

        verifier = PairVerifier(self.decision, lambda n: file_layout(images[n].path),
                                lambda n: keypoints(images[n].path),
                                lambda n, error: self.skipped.append((images[n].path, str(error))))
        accepted = {}
        for a, b, cos in pairs:
            verdict = verifier.verify(a, b, cos)
            if verdict is not None and verdict[0]:
                accepted[(a, b) if ordered else (min(a, b), max(a, b))] = (cos, *verdict[1:])
        return accepted

    def _candidate(self, n: int, image: ReportedImage) -> Candidate:
        """What picks the keeper; read only for images in some group (a header read and a stat). Paths are resolved:
        one outside the scanned folder was reached through a link, and ranks after every file inside."""
        width, height = image_size(image.path)
        elsewhere = self.folder is not None and self.folder not in Path(image.path).parents
        try:
            stat = os.stat(image.path)
        except OSError:  # gone since it was read: ranks last
            return Candidate(n, 0, 0, float("inf"), elsewhere)
        original = Path(image.path).suffix.lower() in ORIGINAL_SUFFIXES
        return Candidate(n, (width or 0) * (height or 0), stat.st_size, stat.st_mtime, elsewhere, original)

