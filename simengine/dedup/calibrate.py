"""The "same picture" decision, calibrated on generated copies against the hardest other photos of each class.

A pair of images is a candidate when the cosine of their backbone features reaches `min_backbone` (the search's
floor); a candidate is a copy when its layout descriptors agree (`dedup.layout`; shrunken, recompressed, recoloured
copies) or when enough keypoint matches agree on one similarity transform (`dedup.keypoints`; crops, rotations,
overlays). Cosines alone cannot make this decision at scale: against the most similar other photo of its class among
Imagenette's 9,469 training images, backbone + layout cosines lost 8 % of the copies to keep 1 % false accepts.

Positives are (original, generated copy) pairs; negatives are (original, the most similar other photo of its class),
once by backbone features and once by layout: the hardest pairs a collection holds that are not duplicates. The
decision is calibrated when a model is trained and stored in the bundle as `same_picture.json`; `calibrate_bundle`
adds it to a bundle trained before.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from simengine.data.decode import load_rgb
from simengine.data.folders import Item
from simengine.dedup.groups import COPY_KINDS
from simengine.errors import BundleError, SimengineError
from simengine.evaluation.metrics import normalise, row_cosines
from simengine.model.encoder import Encoder

SAME_PICTURE = "same_picture.json"
ORIGINALS = 400  # calibration originals; each gets two generated copies and two hard same-class negatives
CANDIDATE_RECALL = 0.995  # the share of calibration copies whose backbone cosine the search floor admits
# The share of the copies left to the keypoints whose backbone cosine the keypoint rule admits. Keypoints alone match
# other things: the same watermark stamped on two photos, the dimples of two golf balls (at backbone cosines
# 0.69-0.75 on the generated benchmark set, where copies left to the keypoints sit above 0.78 on the holdout).
KEYPOINT_RECALL = 0.99
# False accepts allowed on the hardest negatives, split evenly between the layout and keypoint rules. Not lower: a
# real collection's hardest "negatives" hold its own duplicates. Among the 800 of Imagenette's training holdout, the
# 7 with the most agreeing matches (60-236) are a crop of one photo, a horn cut out onto another background and
# burst shots of one scene: a lower rate would set the limit on them and reject most generated copies.
TARGET_FAR = 0.02
MIN_MATCHES = 8


@dataclass(frozen=True)
class SamePicture:
    """Copies of one picture: backbone cosine >= min_backbone and layout cosine >= min_layout, or backbone cosine
    >= min_backbone_matches and at least min_matches keypoint matches agreeing on one similarity transform."""

    min_backbone: float
    min_layout: float
    min_backbone_matches: float
    min_matches: int
    keypoint_rule: bool = True  # off: crops, rotations and overlays are not copies (`counting("resized")`)

    def accepts(self, backbone: float, layout: float, matches: Callable[[], int]) -> tuple[bool, int | None]:
        """The decision and the agreeing matches (None when they were not needed, and not counted)."""
        if backbone < self.min_backbone:
            return False, None
        if layout >= self.min_layout:
            return True, None
        if not self.keypoint_rule or backbone < self.min_backbone_matches:
            return False, None
        found = matches()
        return found >= self.min_matches, found

    def counting(self, copies: str) -> "SamePicture | None":
        """The decision that counts only the `copies` of `COPY_KINDS`; None for "exact", which needs no decision."""
        if copies not in COPY_KINDS:
            raise SimengineError(f"--copies must be one of {', '.join(COPY_KINDS)}, not {copies!r}")
        if copies == "exact":
            return None
        return replace(self, keypoint_rule=copies == "edited")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class PairSignals:
    """Row-aligned signals of a set of image pairs."""

    backbone: np.ndarray
    layout: np.ndarray
    matches: np.ndarray


def _above_all_but(values: np.ndarray, share: float) -> float:
    """The smallest threshold that at most `share` of `values` reach."""
    allowed = int(np.floor(share * len(values)))
    ordered = np.sort(values)[::-1]
    return float(np.nextafter(ordered[allowed], np.inf)) if allowed < len(ordered) else float(ordered[-1])


def fit_same_picture(positive: PairSignals, negative: PairSignals, target_far: float = TARGET_FAR,
                     ) -> tuple[SamePicture, dict[str, float]]:
    """The decision from positive and negative pairs, and its false-accept and false-reject rates on them."""
    if len(positive.backbone) < 2 or len(negative.backbone) < 2:
        raise ValueError("calibration needs at least 2 positive and 2 negative pairs")
    min_backbone = float(np.quantile(positive.backbone, 1 - CANDIDATE_RECALL))
    min_layout = min(1.0, _above_all_but(negative.layout, target_far / 2))
    left_to_keypoints = positive.backbone[positive.layout < min_layout]
    decision = SamePicture(
        min_backbone=min_backbone,
        min_layout=min_layout,
        min_backbone_matches=max(min_backbone, float(np.quantile(left_to_keypoints, 1 - KEYPOINT_RECALL))
                                 if len(left_to_keypoints) else min_backbone),
        min_matches=max(MIN_MATCHES, int(np.ceil(_above_all_but(negative.matches.astype(float), target_far / 2)))))

    def accepted(signals: PairSignals) -> np.ndarray:
        return np.array([decision.accepts(b, lay, lambda m=m: int(m))[0]
                         for b, lay, m in zip(signals.backbone, signals.layout, signals.matches)])

    return decision, {"far": float(accepted(negative).mean()), "frr": float(1 - accepted(positive).mean()),
                      "positives": len(positive.backbone), "negatives": len(negative.backbone)}


def hardest_same_class(features: np.ndarray, labels: Sequence[str], rows: np.ndarray) -> np.ndarray:
    """For each row in `rows`, the index of the most similar *other* item of its class (-1 when it has none)."""
    unit, labels = normalise(features), np.asarray(labels)
    out = np.full(len(rows), -1)
    for n, row in enumerate(rows):
        same = np.flatnonzero(labels == labels[row])
        same = same[same != row]
        if len(same):
            out[n] = same[np.argmax(unit[same] @ unit[row])]
    return out


def calibrate_on_items(encoder: Encoder, items: Sequence[Item], features: np.ndarray, flip: bool,
                       originals_from: np.ndarray | None = None, originals: int = ORIGINALS, seed: int = 0,
                       target_far: float = TARGET_FAR) -> tuple[SamePicture, dict[str, Any]]:
    """Calibrate on labelled `items` (with their backbone `features`, row-aligned): a seeded sample of originals
    (from the rows `originals_from`, default all), two generated copies of each (`dedup.copies`), and each
    original's hardest same-class negatives among all the items, by backbone and by layout. Returns the decision
    and a record of its accuracy and what it was calibrated on."""
    from simengine.dedup.copies import make_copy
    from simengine.dedup.keypoints import agreeing_matches, keypoints
    from simengine.dedup.layout import layout_descriptor, layout_descriptors

    labels = [i.label for i in items]
    if len(items) < 3:
        raise SimengineError("same-picture calibration needs at least 3 labelled images")
    layouts, failed = layout_descriptors([i.path for i in items])
    good = np.ones(len(items), bool)
    good[[row for row, _ in failed]] = False
    pool = np.flatnonzero(good) if originals_from is None else np.intersect1d(originals_from, np.flatnonzero(good))
    if len(pool) < 2:  # a holdout too small to draw from: any item can be an original
        pool = np.flatnonzero(good)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(pool, size=min(originals, len(pool)), replace=False))
    usable = [label if ok else None for label, ok in zip(labels, good)]  # a failed item is nobody's negative
    by_backbone = hardest_same_class(features, usable, rows)
    by_layout = hardest_same_class(layouts, usable, rows)
    keep = (by_backbone >= 0) & (by_layout >= 0)
    rows, by_backbone, by_layout = rows[keep], by_backbone[keep], by_layout[keep]
    if len(rows) < 2:
        raise SimengineError("same-picture calibration needs at least 2 readable originals with another image of "
                             "their class")
    # each image once, for its copies and as a negative: at most 3 × ORIGINALS images of about 40 kB
    item_keypoints = functools.lru_cache(maxsize=None)(lambda row: keypoints(items[row].path))
    kinds: dict[str, int] = {}
    copy_of, copy_layouts, copy_matches = [], [], []
    with tempfile.TemporaryDirectory(prefix="simengine-copies-") as tmp:
        paths = []
        for row in rows:
            original = load_rgb(items[row].path)
            original_keypoints = item_keypoints(row)
            for _ in range(2):
                copy, names = make_copy(original, rng)
                for name in names:
                    kinds[name] = kinds.get(name, 0) + 1
                paths.append(os.path.join(tmp, f"{len(paths)}.png"))  # lossless: the copy keeps exactly its edits
                copy.save(paths[-1])
                copy_of.append(row)
                copy_layouts.append(layout_descriptor(copy))
                copy_matches.append(agreeing_matches(original_keypoints, keypoints(paths[-1])))
        result = encoder.embed_paths(paths, flip=flip)
    ok = np.asarray(result.ok, int)
    copy_of = np.asarray(copy_of)[ok]
    positive = PairSignals(row_cosines(features[copy_of], result.vectors),
                           row_cosines(layouts[copy_of], np.stack(copy_layouts)[ok]), np.asarray(copy_matches)[ok])
    anchors, others = np.r_[rows, rows], np.r_[by_backbone, by_layout]
    negative = PairSignals(row_cosines(features[anchors], features[others]),
                           row_cosines(layouts[anchors], layouts[others]),
                           np.array([agreeing_matches(item_keypoints(a), item_keypoints(o))
                                     for a, o in zip(anchors, others)]))
    decision, accuracy = fit_same_picture(positive, negative, target_far)
    info = {"accuracy": accuracy, "originals": int(len(rows)), "copies": int(len(ok)),
            "copies_by_transform": dict(sorted(kinds.items())), "pool": len(items),
            "negatives": "each original's most similar other image of its class in the pool, by backbone and by "
                         "layout", "target_far": target_far, "seed": seed}
    return decision, info


def same_picture_file(decision: SamePicture, info: dict[str, Any], calibrated_on: str) -> bytes:
    return json.dumps({"decision": decision.to_dict(), "calibrated_on": calibrated_on, **info}, indent=2).encode()


def read_same_picture(bundle_dir: str | os.PathLike) -> tuple[SamePicture, dict[str, Any]] | None:
    """The bundle's same-picture decision and its record, or None for a bundle trained before it existed."""
    path = Path(bundle_dir) / SAME_PICTURE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        decision = SamePicture(**{k: record["decision"][k] for k in SamePicture.__dataclass_fields__
                                  if k in record["decision"] or k != "keypoint_rule"})
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: corrupt ({exc})") from exc
    return decision, record


def write_same_picture(bundle_dir: str | os.PathLike, data: bytes) -> Path:
    """Add (or replace) a bundle's calibration atomically: readers see the old file or the new one."""
    from simengine.files import write_durably

    path = Path(bundle_dir) / SAME_PICTURE
    write_durably(path, data)
    return path


def calibrate_bundle(bundle_dir: str | os.PathLike, data: str | os.PathLike, runtime: str = "auto",
                     target_far: float = TARGET_FAR, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Calibrate a bundle's same-picture decision on an ImageFolder dataset's train split (originals from the
    bundle's training holdout when the dataset holds it, as `train` does), and store it in the bundle."""
    from simengine.data.folders import scan_split
    from simengine.model.bundle import CONFIG, load_bundle
    from simengine.model.feature_cache import FeatureCache
    from simengine.model.general import GENERAL_DIR

    model = load_bundle(bundle_dir, runtime)
    items = scan_split(data, "train")
    features, _ = FeatureCache(model.encoder, flip=model.flip).features(
        [str(i.path) for i in items], [i.sha256 for i in items], progress=progress)
    keep = np.flatnonzero(~np.isnan(features).any(axis=1))
    items, features = [items[i] for i in keep], features[keep]
    holdout = set(model.config.get("holdout_sha256") or ())
    originals_from = np.array([n for n, i in enumerate(items) if i.sha256 in holdout], int)
    if len(originals_from) < 3:
        originals_from = None
    calibrated_on = f"{data}/train" + (", originals from the training holdout" if originals_from is not None else "")
    decision, info = calibrate_on_items(model.encoder, items, features, model.flip, originals_from, seed=seed,
                                        target_far=target_far)
    record = same_picture_file(decision, info, calibrated_on)
    write_same_picture(bundle_dir, record)
    if (Path(bundle_dir) / GENERAL_DIR / CONFIG).is_file():  # the twin shares the backbone, so the decision
        write_same_picture(Path(bundle_dir) / GENERAL_DIR, record)
    return read_same_picture(bundle_dir)[1]
