"""ImageFolder collections (`root/<split>/<class>/*`): the one description of an image, and scanning for them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simengine.errors import SimengineError
from simengine.files import sha256_file

# An item's row in an index; a source's other columns are its metadata.
ROW_COLUMNS = ("id", "path", "label", "split", "sha256", "width", "height", "added_at")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Item:
    """One image: where it is, its class if known, the split it came from, its content hash, and the metadata its
    source gave it (a table's other columns)."""

    path: Path
    label: str | None
    split: str | None
    sha256: str
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike, label: str | None = None, split: str | None = None) -> "Item":
        path = Path(path).resolve()
        return cls(path=path, label=label, split=split, sha256=sha256_file(path))


def scan_split(root: str | os.PathLike, split: str) -> list[Item]:
    """Items of `root/split/<class>/*` (absolute paths), sorted by class then file name."""
    split_dir = Path(root).resolve() / split
    if not split_dir.is_dir():
        raise SimengineError(f"{split_dir}: split {split!r} not found")
    items = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                items.append(Item(path=path, label=class_dir.name, split=split, sha256=sha256_file(path)))
    if not items:
        raise SimengineError(f"{split_dir}: no images in class folders")
    return items


def scan_dataset(root: str | os.PathLike, splits: tuple[str, ...] = ("train", "val")) -> list[Item]:
    """Items of several splits, in split order."""
    return [item for split in splits for item in scan_split(root, split)]
