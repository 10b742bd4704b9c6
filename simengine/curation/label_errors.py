"""Label errors: items whose label disagrees with what the rest of the collection says about them.

Two out-of-sample witnesses, averaged. The neighbours: each labelled item's k nearest *other* pictures
(`curation.neighbours`: never itself nor a copy of it, each other picture once) vote for their labels with their
cosines, plus a small uniform prior so that an item without labelled neighbours stays undecided. A linear head: a
softmax regression on the vectors, cross-validated in 5 folds (`curation.linear_head`), so that no head that learned
an item's label judges it. An item is flagged when another label outweighs its own, and ranked by the weight left on
its own label (self-confidence), lowest first. The two witnesses err differently: the vote is local (it sees a small
class and a mislabelled near-copy of its neighbours), the head global (it is not fooled by a dense pocket of one
wrong label); on the benchmark's four sets their average ranked errors better than either (`benchmarks/results/
curation.md`, where the choice and its caveat are written down).

The embedding must not have learned these labels: a model trained on the very labels being checked pulls each
mislabelled image towards its wrong class and hides the error. `find_label_errors` says so when most of the index's
images lie in the dataset its model was trained on.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simengine.curation import LABEL_NEIGHBOURS
from simengine.curation.neighbours import IndexedItems, nearest_others, read_items
from simengine.errors import SimengineError

NEIGHBOURS = LABEL_NEIGHBOURS
PRIOR = 0.5  # the weight of the uniform prior, in votes: an item with no labelled neighbour stays undecided
EVIDENCE = 5  # disagreeing neighbours shown per flagged item


@dataclass
class LabelIssue:
    id: int
    path: str
    label: str
    suggested: str  # the label its neighbours give the most weight
    label_weight: float  # the share of the neighbours' weight on its own label, out of sample
    suggested_weight: float
    margin: float  # label_weight minus the strongest other label's weight: below 0 when flagged
    evidence: list[dict[str, Any]] = field(default_factory=list)  # neighbours of other labels: id, path, label, cosine


@dataclass
class LabelErrorReport:
    index: str
    version: int
    k: int
    items: int
    labelled: int
    issues: list[LabelIssue]
    seconds: float = 0.0
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "version": self.version, "k": self.k, "items": self.items, "labelled": self.labelled,
                "flagged": len(self.issues), "seconds": round(self.seconds, 2), "warning": self.warning,
                "issues": [asdict(issue) for issue in self.issues]}


def label_weights(neighbours: np.ndarray, cosines: np.ndarray, codes: np.ndarray, n_labels: int,
                  prior: float = PRIOR) -> np.ndarray:
    """(items, labels) shares of the neighbours' votes: each labelled neighbour (code >= 0) votes for its label with
    its cosine (negative cosines do not vote), plus `prior` votes spread evenly."""
    n, k = neighbours.shape
    valid = neighbours >= 0
    voter = np.where(valid, codes[np.maximum(neighbours, 0)], -1)
    weight = np.where(valid & (voter >= 0), np.clip(np.nan_to_num(cosines), 0, None), 0.0)
    votes = np.zeros((n, n_labels), np.float32)  # 4 bytes a label per item: 400 MB at 1M items and 100 labels
    np.add.at(votes, (np.repeat(np.arange(n), k), np.maximum(voter, 0).ravel()), weight.ravel())
    votes += prior / n_labels
    return votes / votes.sum(axis=1, keepdims=True)


def normalised_margin(weights: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Each row's weight on its given label minus its largest weight on any other label."""
    rows = np.arange(len(given))
    own = weights[rows, given]
    others = weights.copy()
    others[rows, given] = -np.inf
    return own - others.max(axis=1)


@dataclass
class LabelJudgement:
    """What the collection says of every item's label, row-aligned with its items."""

    names: list[str]  # the labels, sorted; weights' columns
    weights: np.ndarray  # (items, labels): the neighbour vote, with the out-of-fold head's probabilities when used
    confidence: np.ndarray  # each labelled row's weight on its own label (NaN unlabelled): the ranking, lowest first
    margin: np.ndarray  # that weight minus the strongest other label's (NaN unlabelled): flagged below 0
    neighbours: np.ndarray  # (items, k) rows of the k nearest other pictures (-1 none)
    cosines: np.ndarray
    labelled: np.ndarray  # the labelled rows

    @property
    def flagged(self) -> np.ndarray:
        """Flagged rows, worst (least confident in their own label) first."""
        rows = self.labelled[self.margin[self.labelled] < 0]
        return rows[np.argsort(self.confidence[rows], kind="stable")]


def judge_labels(vectors: np.ndarray, labels: list[str | None], sha256: list[str], k: int = NEIGHBOURS,
                 head: bool = True, seed: int = 0) -> LabelJudgement:
    """Every labelled item's label against its k nearest other pictures' votes, averaged with the probabilities of
    a linear head cross-validated over the items (`curation.linear_head`; `head=False`: the vote alone). Both are
    out of sample: an item's own label never votes, and no head that learned it judges it."""
    names = sorted({label for label in labels if label is not None})
    if len(names) < 2:
        raise SimengineError("judging labels needs at least 2 labels in the index")
    code_of = {name: n for n, name in enumerate(names)}
    codes = np.array([code_of[label] if label is not None else -1 for label in labels], np.int64)
    neighbours, cosines = nearest_others(vectors, sha256, k)
    weights = label_weights(neighbours, cosines, codes, len(names))
    if head:
        from simengine.curation.linear_head import out_of_fold_probabilities

        weights = (weights + out_of_fold_probabilities(vectors, codes, len(names), seed=seed)) / 2
    labelled = np.flatnonzero(codes >= 0)
    margin, confidence = np.full(len(labels), np.nan), np.full(len(labels), np.nan)
    margin[labelled] = normalised_margin(weights[labelled], codes[labelled])
    confidence[labelled] = weights[labelled, codes[labelled]]
    return LabelJudgement(names, weights, confidence, margin, neighbours, cosines, labelled)


def find_label_errors(index_dir: str | os.PathLike, k: int = NEIGHBOURS, top: int | None = None,
                      head: bool = True) -> LabelErrorReport:
    """The index's items whose label the rest of the collection disagrees with (see `judge_labels`), least confident
    in their own label first (the `top` ones, or all flagged), each with the label the collection suggests and the
    neighbours that disagree. Reads only; changes nothing."""
    started = time.time()
    items = read_items(index_dir)
    judged = judge_labels(items.vectors, items.labels, items.sha256, k, head)
    issues = [_issue(items, int(n), judged) for n in judged.flagged[:top]]
    return LabelErrorReport(str(index_dir), items.version, k, len(items.rows), len(judged.labelled), issues,
                            time.time() - started, trained_on_itself(items))


def _issue(items: IndexedItems, n: int, judged: LabelJudgement) -> LabelIssue:
    row, label = items.rows[n], items.rows[n]["label"]
    suggested = int(np.argmax(judged.weights[n]))
    evidence = [{"id": items.rows[m]["id"], "path": items.rows[m]["path"], "label": items.rows[m]["label"],
                 "cosine": round(float(c), 4)}
                for m, c in zip(judged.neighbours[n], judged.cosines[n])
                if m >= 0 and items.rows[m]["label"] not in (label, None)][:EVIDENCE]
    return LabelIssue(row["id"], row["path"], label, judged.names[suggested], round(float(judged.confidence[n]), 4),
                      round(float(judged.weights[n, suggested]), 4), round(float(judged.margin[n]), 4), evidence)


def trained_on_itself(items: IndexedItems) -> str | None:
    """A warning when most of the index's images lie in the dataset its model was trained on (by path; a bundle that
    records only the dataset's folder name, as the built-in one does, by that name), whose labels it may have
    learned."""
    root = (items.model_config.get("dataset") or {}).get("root")
    if not root:
        return None
    root = Path(root)

    def inside(path: str) -> bool:
        return root in Path(path).parents if root.is_absolute() else root.name in Path(path).parts[:-1]

    count = sum(1 for row in items.rows if inside(row["path"]))
    if count * 2 < len(items.rows):
        return None
    return (f"{count} of these {len(items.rows)} images lie in {root}, which the index's model was trained on: it "
            "may have learned their labels, errors included, and hide them; judge labels with a model that never "
            "saw them")
