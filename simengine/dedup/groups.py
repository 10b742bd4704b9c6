"""Duplicate groups that never chain unrelated images.

Grouping by connected components would join A and C when A≈B and B≈C although A≉C: a chain of small edits (or a
series of similar shots) would swallow a collection. Instead each group is a star around its keeper:

1. Keepers: images are taken in keeper order (a file inside the scanned folder before one reached through a link
   to outside it, then the `--keep` rule: by default largest resolution, largest file, oldest); one that is not
   a duplicate of a keeper already chosen becomes a keeper.
2. Every other image joins the keeper it is most similar to (it is a duplicate of at least one: that is why it is
   not a keeper). Choosing the most similar, rather than the first in keeper order, keeps one wrong link to a
   larger image from pulling a copy away from its own original.

Every member of a group is a duplicate of the group's keeper; two members need not be duplicates of each other (B's
copies A and C, in the example, when B is the best copy). A keeper left without members is in no group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence


@dataclass(frozen=True)
class Candidate:
    """One image as dedup sees it: an id, and what decides which copy to keep."""

    id: int  # also the order in which the source named the image
    pixels: int
    size_bytes: int
    mtime: float
    elsewhere: bool = False  # reached through a link to outside the scanned folder
    original: bool = True  # a format cameras and scanners write, not one copies are usually saved as

    def keeper_rank(self, keep: str = "largest") -> tuple:
        """Sorts best first: a file inside the scanned folder (the keeper is the copy that stays there), then by
        the `keep` rule (see KEEP_RULES), then the lowest id."""
        largest = (-self.pixels, -self.size_bytes)
        rule = {"largest": (*largest, self.mtime), "oldest": (self.mtime, *largest),
                "newest": (-self.mtime, *largest), "first": (), "original": (not self.original, *largest, self.mtime)}
        return (self.elsewhere, *rule[keep], self.id)


KEEP_RULES = {
    "largest": "most pixels, then the largest file, then the oldest",
    "oldest": "the oldest file (modification time), then the largest",
    "newest": "the newest file, then the largest",
    "first": "the first in the source's order (sorted paths, or a list's or table's rows)",
    "original": "a camera format (JPEG, HEIC, TIFF, raw) before a derived one (PNG, WebP, GIF, BMP), then the largest",
}
# Which copies count, strictest first: the same bytes; the same picture resized, recompressed or recoloured, its
# layout unchanged (the layout rule of the same-picture decision alone); also cropped, rotated or overlaid (the
# keypoint rule too: the calibrated decision whole). See `dedup.calibrate.SamePicture.counting`.
COPY_KINDS = ("exact", "resized", "edited")
ORIGINAL_SUFFIXES = (".jpg", ".jpeg", ".heic", ".heif", ".tif", ".tiff", ".dng", ".cr2", ".cr3", ".nef", ".arw",
                     ".orf", ".rw2", ".raf")


@dataclass
class Group:
    keeper: int
    duplicates: list[int] = field(default_factory=list)
    similarity: dict[int, float] = field(default_factory=dict)  # of each duplicate to the keeper

    @property
    def members(self) -> list[int]:
        return [self.keeper, *self.duplicates]


def group_duplicates(candidates: Sequence[Candidate], pairs: Iterable[tuple[int, int, float]],
                     keep: str = "largest") -> list[Group]:
    """Star groups from duplicate pairs (id, id, similarity), keepers and their members in keeper order (the `keep`
    rule); images in no pair are in no group. Memory is what the pairs take, never the square of the collection."""
    neighbours: dict[int, dict[int, float]] = {}
    for a, b, similarity in pairs:
        if a == b:
            continue
        for x, y in ((a, b), (b, a)):
            known = neighbours.setdefault(x, {})
            known[y] = max(similarity, known.get(y, similarity))
    linked = sorted((c for c in candidates if c.id in neighbours), key=lambda c: c.keeper_rank(keep))
    rank = {c.id: n for n, c in enumerate(linked)}
    keepers: set[int] = set()
    for candidate in linked:
        if not any(other in keepers for other in neighbours[candidate.id]):
            keepers.add(candidate.id)
    members: dict[int, dict[int, float]] = {}
    for candidate in linked:
        if candidate.id not in keepers:
            choices = {k: s for k, s in neighbours[candidate.id].items() if k in keepers}
            keeper = max(choices, key=lambda k: (choices[k], -rank[k]))  # the most similar; on a tie the better
            members.setdefault(keeper, {})[candidate.id] = choices[keeper]
    groups = []
    for keeper in sorted(members, key=rank.__getitem__):
        duplicates = sorted(members[keeper], key=rank.__getitem__)
        groups.append(Group(keeper, duplicates, {i: members[keeper][i] for i in duplicates}))
    return groups


def exact_groups(candidates: Sequence[Candidate], sha256: Mapping[int, str], keep: str = "largest") -> list[Group]:
    """Groups of byte-identical files (same content hash), the best copy by the `keep` rule as keeper."""
    by_hash: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_hash.setdefault(sha256[candidate.id], []).append(candidate)
    groups = []
    for same in by_hash.values():
        if len(same) > 1:
            keeper, *rest = sorted(same, key=lambda c: c.keeper_rank(keep))
            groups.append(Group(keeper.id, [c.id for c in rest], {c.id: 1.0 for c in rest}))
    return sorted(groups, key=lambda g: g.keeper)
