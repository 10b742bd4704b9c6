"""Seeded, balanced pair and triplet sets, and their CSV form (`img1,img2,label`, `img1,img2,img3,label`)."""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from simengine.errors import SimengineError

# The reference protocol's sizes.
PRESETS = {"train": 1280, "test": 320}


@dataclass(frozen=True)
class Sample:
    """A tuple of item indices and a 0/1 label (for training triplets the label is always 1)."""

    indices: tuple[int, ...]
    label: int


class _Classes:
    """Items grouped by class (classes with 2+ items only), with vectorised seeded draws."""

    def __init__(self, labels: Sequence[str]):
        groups: dict[str, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            groups[label].append(i)
        usable = [(c, ix) for c, ix in sorted(groups.items()) if len(ix) >= 2]
        if len(usable) < 3:
            raise SimengineError("sampling needs at least 3 classes with 2 or more images each")
        self.n = len(usable)
        self.order = np.concatenate([ix for _, ix in usable])
        self.size = np.array([len(ix) for _, ix in usable])
        self.start = np.r_[0, np.cumsum(self.size)[:-1]]

    def cycled(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` class codes, each used floor or ceil of n/classes times, in random order."""
        reps = -(-n // self.n)
        return np.concatenate([rng.permutation(self.n) for _ in range(reps)])[:n] if n else np.zeros(0, int)

    def pick(self, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One random item of each class in `codes`."""
        return self.order[self.start[codes] + (rng.random(len(codes)) * self.size[codes]).astype(int)]

    def pick_two(self, codes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Two distinct random items of each class in `codes`."""
        i = (rng.random(len(codes)) * self.size[codes]).astype(int)
        j = (rng.random(len(codes)) * (self.size[codes] - 1)).astype(int)
        j += j >= i
        return self.order[self.start[codes] + i], self.order[self.start[codes] + j]

    def others(self, codes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Two distinct classes per row, both different from the row's class."""
        r1 = rng.integers(0, self.n - 1, len(codes))
        r2 = rng.integers(0, max(1, self.n - 2), len(codes))
        r2 += r2 >= r1
        return (codes + 1 + r1) % self.n, (codes + 1 + r2) % self.n


def _shuffled(samples: list[Sample], rng: np.random.Generator) -> list[Sample]:
    return [samples[i] for i in rng.permutation(len(samples))]


def sample_pairs(labels: Sequence[str], n: int, seed: int = 0) -> list[Sample]:
    """n pairs, half same-class and half different-class, each class used equally often as the first item."""
    classes, rng = _Classes(labels), np.random.default_rng(seed)
    same = classes.cycled(n // 2, rng)
    a, b = classes.pick_two(same, rng)
    diff = classes.cycled(n - n // 2, rng)
    other, _ = classes.others(diff, rng)
    c, d = classes.pick(diff, rng), classes.pick(other, rng)
    samples = [Sample((int(x), int(y)), 1) for x, y in zip(a, b)] + [Sample((int(x), int(y)), 0) for x, y in zip(c, d)]
    return _shuffled(samples, rng)


def sample_training_triplets(labels: Sequence[str], n: int, seed: int = 0) -> list[Sample]:
    """n (anchor, positive, negative) triplets with anchor classes balanced."""
    classes, rng = _Classes(labels), np.random.default_rng(seed)
    anchor_class = classes.cycled(n, rng)
    a, p = classes.pick_two(anchor_class, rng)
    neg = classes.pick(classes.others(anchor_class, rng)[0], rng)
    return [Sample((int(x), int(y), int(z)), 1) for x, y, z in zip(a, p, neg)]


def sample_eval_triplets(labels: Sequence[str], n: int, seed: int = 0) -> list[Sample]:
    """n triplets for "do at least two share a class?": half positive (the shared pair in any position), half three classes."""
    classes, rng = _Classes(labels), np.random.default_rng(seed)
    n_pos = n // 2
    shared = classes.cycled(n_pos, rng)
    a, b = classes.pick_two(shared, rng)
    odd = classes.pick(classes.others(shared, rng)[0], rng)
    odd_at = rng.permutation(np.arange(n_pos) % 3)
    samples = []
    for x, y, z, at in zip(a, b, odd, odd_at):
        trio = [int(x), int(y)]
        trio.insert(int(at), int(z))
        samples.append(Sample(tuple(trio), 1))
    first = classes.cycled(n - n_pos, rng)
    second, third = classes.others(first, rng)
    for x, y, z in zip(classes.pick(first, rng), classes.pick(second, rng), classes.pick(third, rng)):
        samples.append(Sample((int(x), int(y), int(z)), 0))
    return _shuffled(samples, rng)


SAMPLERS = {"pairs": sample_pairs, "triplets": sample_eval_triplets, "train-triplets": sample_training_triplets}


def sample_split_to_csv(root: str | os.PathLike, split: str, kind: str, out: str | os.PathLike, n: int | None = None,
                        seed: int = 0) -> int:
    """Draw a balanced, seeded set of `kind` (pairs, triplets, train-triplets) from an ImageFolder split and write it
    as CSV; returns the number of rows (by default the reference protocol's size)."""
    from simengine.data.folders import scan_split

    if kind not in SAMPLERS:
        raise SimengineError(f"unknown set {kind!r}; choose one of {', '.join(SAMPLERS)}")
    items = scan_split(root, split)
    n = n or PRESETS["train" if kind == "train-triplets" else "test"]
    samples = SAMPLERS[kind]([i.label for i in items], n, seed)
    write_csv(out, samples, [i.path for i in items])
    return len(samples)


def write_csv(path: str | os.PathLike, samples: Sequence[Sample], paths: Sequence[str | os.PathLike]) -> None:
    """Write samples with image paths relative to the CSV's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width = len(samples[0].indices) if samples else 2
    base = path.parent.resolve()
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([f"img{i + 1}" for i in range(width)] + ["label"])
        for s in samples:
            rel = [os.path.relpath(Path(paths[i]).resolve(), base) for i in s.indices]
            writer.writerow(rel + [s.label])


@dataclass(frozen=True)
class CsvRow:
    """One row of a pairs/triplets CSV: image paths (relative ones resolved against the CSV's folder) or `id:N`
    references to indexed items, and the label if given."""

    line: int
    images: tuple[Path | str, ...]
    label: int | str | None


def _csv_lines(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped fields) of a UTF-8 CSV file's non-empty rows."""
    path = Path(path)
    if not path.is_file():
        raise SimengineError(f"{path}: no such CSV file")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a BOM, as spreadsheets write it, is dropped
    except UnicodeDecodeError as exc:
        raise SimengineError(f"{path}: not UTF-8 text (byte {exc.start} of the file)") from None
    for line_no, fields in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
        fields = [f.strip() for f in fields]
        if fields and any(fields):
            yield line_no, fields


def _image_ref(field: str, base: Path) -> Path | str:
    return field if field.startswith("id:") else base / field


def read_csv(path: str | os.PathLike, width: int) -> tuple[list[CsvRow], list[str]]:
    """Rows with `width` images (paths relative to the CSV) and an optional 0/1 label; bad rows come back as messages."""
    path = Path(path)
    rows, bad = [], []
    for line_no, fields in _csv_lines(path):
        if line_no == 1 and fields[0].lower() == "img1":
            continue
        if len(fields) not in (width, width + 1):
            bad.append(f"{path}:{line_no}: expected {width} image paths and an optional label, got {len(fields)} fields")
            continue
        label = None
        if len(fields) == width + 1:
            if fields[-1] not in ("0", "1"):
                bad.append(f"{path}:{line_no}: label must be 0 or 1, got {fields[-1]!r}")
                continue
            label = int(fields[-1])
        rows.append(CsvRow(line_no, tuple(_image_ref(f, path.parent) for f in fields[:width]), label))
    return rows, bad


def read_labels_csv(path: str | os.PathLike) -> tuple[list[CsvRow], list[str]]:
    """Rows of `image,label` (a path relative to the CSV, or `id:N`, and any class name; a first row `image,label`
    or `path,label` is a header); each comes back as a CsvRow of one image, its label the class name."""
    path = Path(path)
    rows, bad = [], []
    for line_no, fields in _csv_lines(path):
        if line_no == 1 and fields[0].lower() in ("image", "path"):
            continue
        if len(fields) != 2 or not all(fields):
            bad.append(f"{path}:{line_no}: expected an image and its label, got {fields!r}")
            continue
        rows.append(CsvRow(line_no, (_image_ref(fields[0], path.parent),), fields[1]))
    return rows, bad
