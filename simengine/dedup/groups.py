"""Duplicate groups that never chain unrelated images.

Grouping by connected components would join A and C when A≈B and B≈C although A≉C: a chain of small edits (or a
series of similar shots) would swallow a collection. Instead each group is a star around its keeper: images are
taken in keeper order (largest resolution, then largest file, then oldest), and each one not yet grouped takes every
ungrouped image that is a duplicate *of it*. Every member of a group is a duplicate of the group's keeper; two
members need not be duplicates of each other (B's copies A and C, in the example, when B is the best copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence


@dataclass(frozen=True)
class Candidate:
    """One image as dedup sees it: an id, and what decides which copy to keep."""

    id: int
    pixels: int
    size_bytes: int
    mtime: float

    def keeper_rank(self) -> tuple:
        """Sorts best first: most pixels, then the largest file, then the oldest, then the lowest id."""
        return (-self.pixels, -self.size_bytes, self.mtime, self.id)


@dataclass
class Group:
    keeper: int
    duplicates: list[int] = field(default_factory=list)
    similarity: dict[int, float] = field(default_factory=dict)  # of each duplicate to the keeper

    @property
    def members(self) -> list[int]:
        return [self.keeper, *self.duplicates]


def group_duplicates(candidates: Sequence[Candidate], pairs: Iterable[tuple[int, int, float]]) -> list[Group]:
    """Star groups from duplicate pairs (id, id, similarity), keepers in keeper order; images in no pair are in no
    group. Memory is what the pairs take, never the square of the collection."""
    neighbours: dict[int, dict[int, float]] = {}
    for a, b, similarity in pairs:
        if a == b:
            continue
        for x, y in ((a, b), (b, a)):
            known = neighbours.setdefault(x, {})
            known[y] = max(similarity, known.get(y, similarity))
    rank = {c.id: c.keeper_rank() for c in candidates if c.id in neighbours}
    grouped: set[int] = set()
    groups = []
    for candidate in sorted((c for c in candidates if c.id in neighbours), key=Candidate.keeper_rank):
        if candidate.id in grouped:
            continue
        members = {i: s for i, s in neighbours[candidate.id].items() if i not in grouped and i in rank}
        if not members:
            continue
        duplicates = sorted(members, key=rank.__getitem__)
        groups.append(Group(candidate.id, duplicates, {i: members[i] for i in duplicates}))
        grouped.add(candidate.id)
        grouped.update(duplicates)
    return groups


def exact_groups(candidates: Sequence[Candidate], sha256: Mapping[int, str]) -> list[Group]:
    """Groups of byte-identical files (same content hash), the best copy as keeper."""
    by_hash: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_hash.setdefault(sha256[candidate.id], []).append(candidate)
    groups = []
    for same in by_hash.values():
        if len(same) > 1:
            keeper, *rest = sorted(same, key=Candidate.keeper_rank)
            groups.append(Group(keeper.id, [c.id for c in rest], {c.id: 1.0 for c in rest}))
    return sorted(groups, key=lambda g: g.keeper)
