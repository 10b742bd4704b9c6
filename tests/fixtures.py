"""Fixture images: real photos shipped by scikit-image, cropped and jittered into small ImageFolder classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")


def photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def jittered(img: Image.Image, rng: np.random.Generator, size: int = 160) -> Image.Image:
    """A random crop (60-95% of the short side), maybe mirrored, with brightness jitter, resized to `size`."""
    w, h = img.size
    side = int(min(w, h) * rng.uniform(0.6, 0.95))
    left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    out = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return ImageEnhance.Brightness(out).enhance(rng.uniform(0.8, 1.2))


def make_dataset(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """root/<split>/<photo>/<n>.jpg for each split in `per_class`; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        img = photo(name)
        for split, n in per_class.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                jittered(img, rng).save(folder / f"{name}_{i:02d}.jpg", quality=90)
    return root


def lite0_same_picture():
    """The same-picture decision `simengine dedup-calibrate` set for the Lite0 backbone on Imagenette. Tests use it
    because the fixture bundle's own calibration comes from jittered crops of four photos, too few and too alike."""
    from simengine.dedup.calibrate import SamePicture

    return SamePicture(min_backbone=0.68, min_layout=0.926, min_backbone_matches=0.761, min_matches=34)


def copies_folder(root: Path) -> Path:
    """coffee with a smaller and a marked copy (the marked one in a subfolder), rocket with a tilted one, a horse."""
    from simengine.dedup.copies import TRANSFORMS

    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    coffee = photo("coffee")
    coffee.save(root / "coffee.jpg", quality=92)
    TRANSFORMS["resize"](coffee, rng).save(root / "coffee-small.jpg", quality=92)
    TRANSFORMS["text"](coffee, rng).save(root / "sub" / "coffee-marked.jpg", quality=60)
    photo("rocket").save(root / "rocket.jpg", quality=92)
    TRANSFORMS["rotate"](photo("rocket"), rng).save(root / "rocket-tilted.jpg", quality=92)
    photo("horse").save(root / "horse.jpg", quality=92)
    return root


def unlabelled_photos(fixture_data: Path, folder: Path, every: int) -> Path:
    """Every `every`-th photo of the fixture's train split, in one folder with no class folders: no labels."""
    import shutil

    folder.mkdir(parents=True)
    for path in sorted((fixture_data / "train").glob("*/*.jpg"))[::every]:
        shutil.copy(path, folder / path.name)
    return folder
