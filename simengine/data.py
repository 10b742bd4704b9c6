"""ImageFolder datasets: scanning, Imagenette class names, locating and fetching the data."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from simengine.errors import SimengineError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

IMAGENETTE_CLASSES = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
}
IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz"
IMAGENETTE_COUNTS = {"train": 9469, "val": 3925}
DEFAULT_DATA = Path("data/imagenette2-160")


@dataclass(frozen=True)
class Item:
    """One image of an ImageFolder dataset."""

    path: Path
    label: str
    split: str
    sha256: str

    @property
    def class_name(self) -> str:
        return IMAGENETTE_CLASSES.get(self.label, self.label)


def class_name(label: str) -> str:
    """Human name of a class folder (Imagenette WordNet ids are translated)."""
    return IMAGENETTE_CLASSES.get(label, label)


def resolve_data_dir(data: str | os.PathLike | None = None) -> Path:
    """--data, else $SIMENGINE_DATA, else ./data/imagenette2-160; it must exist."""
    chosen = data or os.environ.get("SIMENGINE_DATA") or DEFAULT_DATA
    path = Path(chosen)
    if not path.is_dir():
        hint = "" if data else " (set --data or $SIMENGINE_DATA, or run `simengine data fetch imagenette`)"
        raise SimengineError(f"dataset not found at {path}{hint}")
    return path


def sha256_bytes(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def scan_split(root: str | os.PathLike, split: str) -> list[Item]:
    """Items of `root/split/<class>/*`, sorted by class then file name."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise SimengineError(f"{split_dir}: split {split!r} not found")
    items = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                items.append(Item(path=path, label=class_dir.name, split=split, sha256=sha256_bytes(path)))
    if not items:
        raise SimengineError(f"{split_dir}: no images in class folders")
    return items


def scan_dataset(root: str | os.PathLike, splits: tuple[str, ...] = ("train", "val")) -> list[Item]:
    """Items of several splits, in split order."""
    return [item for split in splits for item in scan_split(root, split)]


def fetch_imagenette(dest: str | os.PathLike = "data", url: str = IMAGENETTE_URL, timeout: float = 10.0) -> Path:
    """Download and unpack fast.ai's imagenette2-160, then check its image counts."""
    import tarfile
    import urllib.request

    dest = Path(dest)
    target = dest / "imagenette2-160"
    if target.is_dir():
        verify_imagenette(target)
        return target
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "imagenette2-160.tgz.part"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as fh:
            while block := response.read(1 << 20):
                fh.write(block)
    except OSError as exc:
        archive.unlink(missing_ok=True)
        raise SimengineError(f"cannot download {url}: {exc}; are you offline?") from exc
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    verify_imagenette(target)
    return target


def verify_imagenette(root: Path) -> None:
    """Check the unpacked archive has Imagenette's classes and image counts."""
    for split, expected in IMAGENETTE_COUNTS.items():
        found = sum(1 for p in (root / split).glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if found != expected:
            raise SimengineError(f"{root}/{split}: {found} images, expected {expected}")
    missing = set(IMAGENETTE_CLASSES) - {p.name for p in (root / "train").iterdir()}
    if missing:
        raise SimengineError(f"{root}: classes missing: {sorted(missing)}")
