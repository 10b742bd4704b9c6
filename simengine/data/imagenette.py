"""The reference dataset: Imagenette's class names, where to find it, and fetching and checking fast.ai's archive."""

from __future__ import annotations

import os
from pathlib import Path

from simengine.data.folders import IMAGE_SUFFIXES
from simengine.errors import SimengineError

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


def resolve_data_dir(data: str | os.PathLike | None = None) -> Path:
    """--data, else $SIMENGINE_DATA, else ./data/imagenette2-160; it must exist."""
    chosen = data or os.environ.get("SIMENGINE_DATA") or DEFAULT_DATA
    path = Path(chosen)
    if not path.is_dir():
        hint = "" if data else " (set --data or $SIMENGINE_DATA, or run `simengine data fetch imagenette`)"
        raise SimengineError(f"dataset not found at {path}{hint}")
    return path


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
