"""Copies of one picture, as they appear in real collections: resized, recompressed, cropped, rotated a little,
colour-shifted, watermarked, re-encoded, or kept as a small, heavily compressed thumbnail. They are the positives
that calibrate the near-duplicate decision and the copies that the dedup benchmark hides among distractors."""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

Transform = Callable[[Image.Image, np.random.Generator], Image.Image]


def resized(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    scale = rng.uniform(0.4, 0.9)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR)


def recompressed(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _reencoded(img, "JPEG", quality=int(rng.integers(25, 70)))


def cropped(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    keep = rng.uniform(0.8, 0.95)  # of each side
    w, h = round(img.width * keep), round(img.height * keep)
    left, top = int(rng.integers(0, img.width - w + 1)), int(rng.integers(0, img.height - h + 1))
    return img.crop((left, top, left + w, top + h))


def rotated(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.rotate(float(rng.uniform(-6, 6)), resample=Image.Resampling.BILINEAR, expand=False)


def colour_shifted(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(float(rng.uniform(0.7, 1.3)))
    return img


def watermarked(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = img.copy()
    draw = ImageDraw.Draw(out)
    size = max(8, img.height // 10)
    x, y = int(rng.integers(0, max(1, img.width // 2))), int(rng.integers(0, max(1, img.height - size)))
    draw.text((x, y), "© simengine", fill=(255, 255, 255), font_size=size)
    return out


def thumbnail(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A small, heavily compressed copy, as web pages and chat apps keep one: a short side of 64-128 px (never
    larger than the picture), JPEG quality 25-45."""
    scale = min(1.0, float(rng.integers(64, 129)) / min(img.size))
    small = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC)
    return _reencoded(small, "JPEG", quality=int(rng.integers(25, 46)))


def format_changed(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _reencoded(img, str(rng.choice(["PNG", "WEBP"])), quality=80)


def _reencoded(img: Image.Image, fmt: str, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, fmt, quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


TRANSFORMS: dict[str, Transform] = {
    "resize": resized, "jpeg": recompressed, "crop": cropped, "rotate": rotated, "colour": colour_shifted,
    "text": watermarked, "format": format_changed, "thumbnail": thumbnail,
}


def make_copy(img: Image.Image, rng: np.random.Generator, kinds: tuple[str, ...] | None = None) -> tuple[Image.Image, list[str]]:
    """A copy of `img` through one or two of the transforms (chosen at random from `kinds`), and their names."""
    names = list(kinds or TRANSFORMS)
    chosen = [str(n) for n in rng.choice(names, size=min(len(names), int(rng.integers(1, 3))), replace=False)]
    out = img.convert("RGB")
    for name in chosen:
        out = TRANSFORMS[name](out, rng)
    return out, chosen
