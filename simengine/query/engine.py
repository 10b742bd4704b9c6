"""The query layer: pair-match, "at least two of three", and verified nearest neighbours, over an index and a model.

Nothing on this path imports torch once the model is prepared: the model runs on ONNX Runtime or OpenVINO, the index
is FAISS + SQLite (preparing the built-in model the first time exports it from torch).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Sequence

import numpy as np

from simengine.data.decode import MAX_PIXELS
from simengine.data.evalsets import read_csv
from simengine.dedup.near import NEIGHBOURS
from simengine.errors import ImageLoadError, ModelChangedError, SimengineError
from simengine.evaluation.decisions import Calibration, TRIPLET_PAIRS, pair_scores
from simengine.evaluation.metrics import classification_report
from simengine.index import items
from simengine.index.calibrate import calibration_rows, score_curves
from simengine.index.items import metadata_of
from simengine.index.model_link import require_model
from simengine.index.reader import Index
from simengine.model.builtin import resolve_model_dir
from simengine.model.bundle import Model, load_bundle
from simengine.query.inputs import ImageInput, describe, picture_array, reference
from simengine.index.items import ID_PREFIX, parse_id
from simengine.query.refs import Embedded
from simengine.query.results import BatchResult, CopiesResult, Neighbour, NeighboursResult, PairResult, TripletResult
from simengine.store.layout import resolve_index_dir

NO_INDEX = "no index: build one with `simengine index build PHOTOS` (a pair or a triplet of images needs none)"


class Engine:
    """Answers the three questions from an index and the model that embedded it, held side by side. Before each
    question the index moves to the newest committed version (a file read when nothing changed). Without an index
    (`for_model`), pair and triplet questions are answered with the model's own calibration."""

    def __init__(self, index: Index | None, model: Model, mode: str | None = None, runtime: str = "auto",
                 max_pixels: int = MAX_PIXELS):
        if index is not None:
            require_model(index.manifest, model, index.path)
        self.index, self.model = index, model
        self._requested_mode, self._runtime, self.max_pixels = mode, runtime, max_pixels
        model.encoder.max_pixels = max_pixels
        self._check_mode()

    @classmethod
    def open(cls, index_dir: str | os.PathLike | None = None, mode: str | None = None, runtime: str = "auto",
             max_pixels: int = MAX_PIXELS) -> "Engine":
        """The engine of an index (by default indexes/default, or the only one under indexes/); images over
        `max_pixels` are refused."""
        return cls.over(Index(resolve_index_dir(index_dir)), mode, runtime, max_pixels)

    @classmethod
    def for_model(cls, model: str | os.PathLike | None = None, mode: str | None = None, runtime: str = "auto",
                  max_pixels: int = MAX_PIXELS) -> "Engine":
        """An engine without an index, for pair and triplet questions: `model` is a bundle, "builtin", or None for
        the default model (indexes/default-model where one was trained, else the built-in model)."""
        return cls(None, load_bundle(resolve_model_dir(model), runtime), mode, runtime, max_pixels)

    @classmethod
    def over(cls, index: Index, mode: str | None = None, runtime: str = "auto", max_pixels: int = MAX_PIXELS
             ) -> "Engine":
        """The engine of an open index (a sharded one, say), with the model that embedded it."""
        return cls(index, load_bundle(index.model_dir, runtime), mode, runtime, max_pixels)

    @property
    def labelled(self) -> bool:
        """Whether the index holds labels: without them no answer speaks of classes (a pair is similar or not)."""
        return self.index is not None and any(label is not None for label in items.label_counts(
            self.index.conn, self.index.version))

    @property
    def calibration(self) -> Calibration:
        return self.model.calibration if self.index is None else self.index.calibration

    def _indexed(self) -> Index:
        if self.index is None:
            raise SimengineError(NO_INDEX)
        return self.index

    @property
    def mode(self) -> str:
        return self._requested_mode or self.calibration.default

    def _check_mode(self) -> None:
        if self.mode not in self.calibration.pair:
            raise SimengineError(f"decision mode {self.mode!r} is not calibrated in this index; "
                                 f"choose one of {', '.join(self.calibration.pair)}")

    def refresh(self) -> bool:
        """Pick up a newer committed version of the index, if any (and its model, when it was rebuilt with another)."""
        if self.index is None:
            return False
        changed = self.index.refresh()
        if self.index.manifest["model"]["hash"] != self.model.hash:  # checked every time: a failed load is retried
            self.model = load_bundle(self.index.model_dir, self._runtime)
            self.model.encoder.max_pixels = self.max_pixels
        self._check_mode()
        return changed

    # --- the index ----------------------------------------------------------------------------------------------

    def item(self, item_id: int) -> dict:
        """Metadata of a live indexed item."""
        self.refresh()
        return self._indexed().item(item_id)

    def info(self) -> dict:
        """The index's summary, with the runtime the model runs on here (and the measurement behind an "auto"
        choice)."""
        self.refresh()
        return dict(self._indexed().info(), runtime=self.model.runtime, runtime_choice=self.model.encoder.runtime_choice)

    # --- embedding ---------------------------------------------------------------------------------------------

    def embed(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """The embedding of an image (a vector of `model.dim` floats, L2-normalised), or of each image of a list
        (one row each): any input of `query.inputs` (a path, a PIL image, an array, bytes, a file, an indexed id)."""
        if isinstance(images, (list, tuple)):
            resolved = self.resolve(images)
            return np.stack([v for _, v in resolved]) if resolved else np.zeros((0, self.model.dim), np.float32)
        return self.resolve([images])[0][1]

    def resolve(self, images: Sequence[ImageInput]) -> list[tuple[str, np.ndarray]]:
        """(name, embedding) for each input: files are embedded (each distinct one once, decoded in parallel), ids
        read from the index, pictures in memory decoded here, `Embedded` ones taken as they are. Raises on the first
        bad input, naming it briefly."""
        refs = [reference(image) for image in images]
        vectors, errors = self.embed_many([ref for ref in refs if ref is not None])
        pictures = [n for n, (image, ref) in enumerate(zip(images, refs))
                    if ref is None and not isinstance(image, Embedded)]
        if pictures:
            batch = np.stack([picture_array(images[n], self.model.encoder) for n in pictures])
            embedded = dict(zip(pictures, self.model.embed_batch(batch)))
        out = []
        for n, (image, ref) in enumerate(zip(images, refs)):
            if isinstance(image, Embedded):
                if image.model_hash != self.model.hash:
                    raise ModelChangedError(f"{image.name}: the index moved to another model while it was embedded; "
                                            "ask again")
                out.append((image.name, image.vector))
            elif ref is None:
                out.append((describe(image), embedded[n]))
            elif ref in errors:
                raise (SimengineError if ref.startswith(ID_PREFIX) else ImageLoadError)(errors[ref])
            else:
                out.append((ref, vectors[ref]))
        return out

    def embed_many(self, refs: Sequence[str | os.PathLike]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Embeddings of paths and `id:N` references by reference ({ref: vector}), and {ref: reason} for the bad ones
        (each distinct image is embedded once)."""
        unique = list(dict.fromkeys(str(r) for r in refs))
        vectors, errors = {}, {}
        by_id = [r for r in unique if r.startswith(ID_PREFIX)]
        for ref in by_id:
            try:
                item_id = parse_id(ref)
                self._indexed().item(item_id)
                vectors[ref] = self.index.vectors([item_id])[0]
            except SimengineError as exc:
                errors[ref] = str(exc)
        files = [r for r in unique if not r.startswith(ID_PREFIX)]
        if files:
            result = self.model.embed_paths(files)
            for row, i in enumerate(result.ok):
                vectors[files[i]] = result.vectors[row]
            for i, _, reason in result.failed:
                errors[files[i]] = reason
        return vectors, errors

    def _signals(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cosine, pair-head logit and decision score for row-aligned embedding pairs."""
        a, b = np.atleast_2d(a), np.atleast_2d(b)
        cos = np.einsum("ij,ij->i", a, b)
        logit = self.model.pair_logits(a, b)
        return cos, logit, pair_scores(self.mode, cos, logit, self.calibration.fusion)

    # --- the three questions -----------------------------------------------------------------------------------

    def pair(self, a: ImageInput, b: ImageInput) -> PairResult:
        """Are `a` and `b` the same class?"""
        self.refresh()
        (name_a, va), (name_b, vb) = self.resolve([a, b])
        return self._pair_result(name_a, name_b, va, vb)

    def _pair_result(self, a: str, b: str, va: np.ndarray, vb: np.ndarray) -> PairResult:
        cos, logit, score = self._signals(va, vb)
        threshold = self.calibration.pair[self.mode].value
        return PairResult(
            a=a, b=b, same=bool(score[0] >= threshold), distance=float(1 - cos[0]),
            distance_threshold=float(1 - self.calibration.pair["distance"].value),
            head_probability=float(pair_scores("head", cos, logit, None)[0]), score=float(score[0]),
            threshold=float(threshold), decision=self.mode,
        )

    def triplet(self, a: ImageInput, b: ImageInput, c: ImageInput) -> TripletResult:
        """Do at least two of `a`, `b`, `c` show the same class?"""
        self.refresh()
        names, vectors = zip(*self.resolve([a, b, c]))
        return self._triplet_result(list(names), list(vectors))

    def _triplet_result(self, refs: list[str], vs: list[np.ndarray]) -> TripletResult:
        threshold = self.calibration.triplet[self.mode].value
        pairs, matching = [], []
        for i, j in TRIPLET_PAIRS:
            cos, logit, score = self._signals(vs[i], vs[j])
            match = bool(score[0] >= threshold)
            pairs.append({"pair": [i, j], "distance": float(1 - cos[0]),
                          "head_probability": float(pair_scores("head", cos, logit, None)[0]),
                          "score": float(score[0]), "match": match})
            if match:
                matching.append([i, j])
        return TripletResult(refs, bool(matching), matching, pairs, float(threshold), self.mode)

    def neighbours(self, image: ImageInput, k: int = 5, where: str | None = None,
                   params: dict[str, Any] | None = None, include_self: bool = False) -> NeighboursResult:
        """The k nearest indexed items, each verified by the pair head, and a class vote among the verified. `where`
        restricts them to the items an SQL condition over their columns selects, e.g. "label = :l AND width > 200"
        with `params={"l": "tench"}` (values are always bound, never spliced into the SQL). The neighbours of
        an indexed item (an id) leave the item itself out, unless `include_self`."""
        if k < 1:
            raise SimengineError("k must be at least 1")
        self.refresh()
        self._indexed()
        [(ref, q)] = self.resolve([image])
        own = None if include_self or not ref.startswith(ID_PREFIX) else parse_id(ref)
        sims, ids = self.index.search(q[None, :], k + (own is not None), where, params)
        keep = (ids[0] >= 0) & (ids[0] != (own if own is not None else -1))
        ids, sims = ids[0][keep][:k], sims[0][keep][:k]
        rows = self.index.items(ids)
        found = []
        if len(ids):
            cos, logit, score = self._signals(np.repeat(q[None, :], len(ids), 0), self.index.vectors(ids))
            head = pair_scores("head", cos, logit, None)
            threshold = self.calibration.pair[self.mode].value
            for n, item_id in enumerate(ids):
                row = rows[int(item_id)]
                found.append(Neighbour(
                    id=int(item_id), path=row["path"], label=row["label"],
                    distance=float(1 - sims[n]), head_probability=float(head[n]),
                    verified=bool(score[n] >= threshold),
                    metadata=metadata_of(row),
                ))
        votes = Counter(n.label for n in found if n.verified and n.label is not None)
        verified = sum(1 for n in found if n.verified)
        predicted, voted = (votes.most_common(1)[0] if votes else (None, 0))
        return NeighboursResult(ref, k, found, predicted, voted / verified if verified else 0.0, verified, voted,
                                restricted=bool(where))

    def score_curves(self, max_items: int = 20_000, seed: int = 0) -> dict[str, Any]:
        """The score histograms and ROC curve behind the thresholds of this engine's mode (`index.calibrate.
        score_curves`), from at most `max_items` labelled items drawn at random (seeded)."""
        self.refresh()
        index = self._indexed()
        rows = items.labelled(index.conn, index.version)
        sample = None
        if (chosen := calibration_rows(rows, self.model)) is not None:
            held, source = chosen
            if len(held) > max_items:  # a sample of the rows that calibrate, no others
                held = np.sort(np.random.default_rng(seed).choice(held, max_items, replace=False)).tolist()
            sample = (index.vectors([rows[n]["id"] for n in held]), [rows[n]["label"] for n in held], source)
        return score_curves(self.model, self.calibration, self.mode, sample, seed=seed)

    def copies(self, image: bytes, name: str = "<bytes>", k: int = NEIGHBOURS) -> CopiesResult:
        """The indexed items that are copies of one picture (the bytes of an image file): exact, or resized,
        recompressed, cropped, recoloured, watermarked copies, by the model's same-picture decision (see
        `dedup.find.copies_in_index`). Not other photos of the same class: that is `neighbours`."""
        from simengine.dedup.find import copies_in_index

        self.refresh()
        decision, members = copies_in_index(self._indexed(), self.model, image, name, k, self.max_pixels)
        return CopiesResult(name, [m.to_dict() for m in members], decision.to_dict())

    # --- batch -------------------------------------------------------------------------------------------------

    def score_csv(self, path: str | os.PathLike, width: int) -> BatchResult:
        """Answer every row of a pairs (width 2) or triplets (width 3) CSV; bad rows are reported and skipped."""
        self.refresh()
        rows, errors = read_csv(path, width)
        vectors, bad = self.embed_many([str(p) for r in rows for p in r.images])
        out, predicted, truth = [], [], []
        for r in rows:
            refs = [str(p) for p in r.images]
            failed = [bad[ref] for ref in refs if ref in bad]
            if failed:
                errors.append(f"{path}:{r.line}: {failed[0]}")
                continue
            if width == 2:
                result = self._pair_result(refs[0], refs[1], vectors[refs[0]], vectors[refs[1]])
                answer = result.same
            else:
                result = self._triplet_result(refs, [vectors[x] for x in refs])
                answer = result.any_match
            out.append({"line": r.line, "label": r.label, "prediction": int(answer), "result": result.to_dict()})
            if r.label is not None:
                predicted.append(answer)
                truth.append(r.label)
        report = classification_report(predicted, truth) if truth else None
        return BatchResult("pairs" if width == 2 else "triplets", out, errors, report)
