"""What the query layer answers: one dataclass per question, whose `to_dict()` is exactly the CLI's `--json`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
    distance: float
    head_probability: float
    verified: bool
    metadata: dict[str, Any] = field(default_factory=dict)  # the columns its source table gave it


@dataclass
class NeighboursResult(_Result):
    query: str
    k: int
    neighbours: list[Neighbour]
    predicted_class: str | None
    confidence: float  # votes / verified_count
    verified_count: int
    votes: int  # verified neighbours of the predicted class
    restricted: bool = False  # a filter chose which items could be neighbours, so it chose the voters too


@dataclass
class BatchResult(_Result):
    kind: str
    rows: list[dict[str, Any]]
    errors: list[str] = field(default_factory=list)
    report: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.report:
            out["accuracy"] = self.report["accuracy"]
        return out


@dataclass
class CopiesResult(_Result):
    """The indexed copies of one image (`Engine.copies`): each a dict of `dedup.find.Member.to_dict()`."""

    image: str
    copies: list[dict[str, Any]]
    decision: dict[str, float]
