"""The query layer: pair-match, "at least two of three", and verified nearest neighbours, over an open index."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from simengine.data import class_name
from simengine.decision import MODES, TRIPLET_PAIRS, pair_scores
from simengine.errors import ImageLoadError, SimengineError
from simengine.evaluation import classification_report
from simengine.index import Index, resolve_index_dir
from simengine.sampling import read_csv

ID_PREFIX = "id:"


class _Result:
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PairResult(_Result):
    a: str
    b: str
    same: bool
    distance: float
    distance_threshold: float
    head_probability: float
    score: float
    threshold: float
    decision: str


@dataclass
class TripletResult(_Result):
    images: list[str]
    any_match: bool
    matching_pairs: list[list[int]]
    pairs: list[dict[str, Any]]
    threshold: float
    decision: str


@dataclass
class Neighbour(_Result):
    id: int
    path: str
    label: str | None
    class_name: str | None
    distance: float
    head_probability: float
    verified: bool


@dataclass
class NeighboursResult(_Result):
    query: str
    k: int
    neighbours: list[Neighbour]
    predicted_class: str | None
    confidence: float
    verified_count: int


@dataclass
class BatchResult(_Result):
    kind: str
    rows: list[dict[str, Any]]
    errors: list[str] = field(default_factory=list)
    report: dict[str, Any] | None = None


class Engine:
    """Answers the three questions from one index; the model and index are loaded once and reused."""

    def __init__(self, index: Index, mode: str | None = None):
        self.index = index
        self.calibration = index.calibration
        self.mode = mode or self.calibration.default
        if self.mode not in self.calibration.pair:
            raise SimengineError(f"decision mode {self.mode!r} is not calibrated in this index; "
                                 f"choose one of {', '.join(self.calibration.pair)}")

    @classmethod
    def open(cls, index_dir: str | os.PathLike | None = None, mode: str | None = None, runtime: str = "auto") -> "Engine":
        return cls(Index(resolve_index_dir(index_dir), runtime=runtime), mode)

    # --- embedding ---------------------------------------------------------------------------------------------

    def embed(self, refs: Sequence[str | os.PathLike]) -> dict[str, np.ndarray]:
        """Embeddings for image paths and `id:N` references; every distinct image is embedded once. Raises on a bad one."""
        vectors, errors = self.embed_many(refs)
        for ref, reason in errors.items():
            raise (SimengineError if ref.startswith(ID_PREFIX) else ImageLoadError)(reason)
        return vectors

    def embed_many(self, refs: Sequence[str | os.PathLike]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Like `embed`, but bad references come back as {ref: reason} instead of raising."""
        unique = list(dict.fromkeys(str(r) for r in refs))
        vectors, errors = {}, {}
        by_id = [r for r in unique if r.startswith(ID_PREFIX)]
        for ref in by_id:
            try:
                item_id = int(ref[len(ID_PREFIX):])
                self.index.item(item_id)
                vectors[ref] = self.index.vectors([item_id])[0]
            except (ValueError, SimengineError) as exc:
                errors[ref] = f"{ref}: {exc}" if isinstance(exc, ValueError) else str(exc)
        files = [r for r in unique if not r.startswith(ID_PREFIX)]
        if files:
            result = self.index.model.embed_paths(files)
            for row, i in enumerate(result.ok):
                vectors[files[i]] = result.vectors[row]
            for i, _, reason in result.failed:
                errors[files[i]] = reason
        return vectors, errors

    def _signals(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cosine, pair-head logit and decision score for row-aligned embedding pairs."""
        a, b = np.atleast_2d(a), np.atleast_2d(b)
        cos = np.einsum("ij,ij->i", a, b)
        logit = self.index.model.pair_logits(a, b)
        return cos, logit, pair_scores(self.mode, cos, logit, self.calibration.fusion)

    # --- the three questions -----------------------------------------------------------------------------------

    def pair(self, a: str | os.PathLike, b: str | os.PathLike) -> PairResult:
        """Are `a` and `b` the same class?"""
        v = self.embed([a, b])
        return self._pair_result(str(a), str(b), v[str(a)], v[str(b)])

    def _pair_result(self, a: str, b: str, va: np.ndarray, vb: np.ndarray) -> PairResult:
        cos, logit, score = self._signals(va, vb)
        threshold = self.calibration.pair[self.mode].value
        return PairResult(
            a=a, b=b, same=bool(score[0] >= threshold), distance=float(1 - cos[0]),
            distance_threshold=float(1 - self.calibration.pair["distance"].value),
            head_probability=float(pair_scores("head", cos, logit, None)[0]), score=float(score[0]),
            threshold=float(threshold), decision=self.mode,
        )

    def triplet(self, a: str | os.PathLike, b: str | os.PathLike, c: str | os.PathLike) -> TripletResult:
        """Do at least two of `a`, `b`, `c` show the same class?"""
        refs = [str(a), str(b), str(c)]
        v = self.embed(refs)
        return self._triplet_result(refs, [v[r] for r in refs])

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

    def neighbours(self, image: str | os.PathLike, k: int = 5) -> NeighboursResult:
        """The k nearest indexed items, each verified by the pair head, and a class vote among the verified."""
        if k < 1:
            raise SimengineError("k must be at least 1")
        ref = str(image)
        q = self.embed([ref])[ref]
        sims, ids = self.index.search(q[None, :], k)
        ids, sims = ids[0][ids[0] >= 0], sims[0][ids[0] >= 0]
        rows = self.index.items(ids)
        found = []
        if len(ids):
            cos, logit, score = self._signals(np.repeat(q[None, :], len(ids), 0), self.index.vectors(ids))
            head = pair_scores("head", cos, logit, None)
            threshold = self.calibration.pair[self.mode].value
            for n, item_id in enumerate(ids):
                row = rows[int(item_id)]
                found.append(Neighbour(
                    id=int(item_id), path=row["path"], label=row["class"],
                    class_name=class_name(row["class"]) if row["class"] else None,
                    distance=float(1 - sims[n]), head_probability=float(head[n]),
                    verified=bool(score[n] >= threshold),
                ))
        votes = Counter(n.label for n in found if n.verified and n.label is not None)
        verified = sum(1 for n in found if n.verified)
        predicted, confidence = (votes.most_common(1)[0] if votes else (None, 0))
        return NeighboursResult(ref, k, found, predicted, confidence / verified if verified else 0.0, verified)

    # --- batch -------------------------------------------------------------------------------------------------

    def score_csv(self, path: str | os.PathLike, width: int) -> BatchResult:
        """Answer every row of a pairs (width 2) or triplets (width 3) CSV; bad rows are reported and skipped."""
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


def parse_refs(refs: Sequence[str]) -> list[str]:
    """Check that each reference is an existing file or an `id:N`; raise with the first bad one."""
    for ref in refs:
        if ref.startswith(ID_PREFIX):
            if not ref[len(ID_PREFIX):].isdigit():
                raise SimengineError(f"{ref}: an id reference is id:<number>")
        elif not Path(ref).is_file():
            raise SimengineError(f"{ref}: no such file")
    return list(refs)


__all__ = ["Engine", "PairResult", "TripletResult", "NeighboursResult", "Neighbour", "BatchResult", "MODES"]
