"""The layout descriptor: the lowest spatial frequencies of a 32×32 grey thumbnail (a continuous perceptual hash).

Backbone features describe what is in a picture; they move when a picture is shrunk to a thumbnail or stamped with
text, since the network sees a blurred or altered image. The thumbnail's low frequencies do not move under resizing,
recompression, format changes, colour shifts or small overlays, but do under crops; the backbone's features barely
move under crops. The same-picture decision sums both cosines (`dedup.calibrate`).
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image

from simengine.data.decode import load_rgb
from simengine.errors import ImageLoadError

SIDE = 32
FREQUENCIES = 8  # the 8×8 lowest, less the mean (DC), which brightness alone changes
DIM = FREQUENCIES * FREQUENCIES - 1
FLAT_GREY_STD = 0.5  # grey levels


@lru_cache(maxsize=1)
def _dct_matrix() -> np.ndarray:
    """Orthonormal DCT-II rows for SIDE samples, the FREQUENCIES lowest."""
    n = np.arange(SIDE)
    rows = np.cos(np.pi * (2 * n[None, :] + 1) * np.arange(FREQUENCIES)[:, None] / (2 * SIDE))
    rows[0] *= np.sqrt(1 / SIDE)
    rows[1:] *= np.sqrt(2 / SIDE)
    return rows.astype(np.float32)


def layout_descriptor(img: Image.Image) -> np.ndarray:
    """Unit vector of DIM low-frequency DCT coefficients of the picture as a SIDE×SIDE grey thumbnail."""
    grey = np.asarray(img.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX), np.float32)
    if grey.std() < FLAT_GREY_STD:  # a flat image has no layout (its coefficients would be rounding noise)
        return np.zeros(DIM, np.float32)
    c = _dct_matrix()
    coefficients = (c @ grey @ c.T).ravel()[1:]
    return coefficients / np.linalg.norm(coefficients)


def file_layout(path: str | os.PathLike) -> np.ndarray:
    """The descriptor of an image file (ImageLoadError when it cannot be decoded). JPEGs are decoded at a reduced
    size (draft mode): the thumbnail needs few pixels."""
    return layout_descriptor(load_rgb(path, draft_size=(4 * SIDE, 4 * SIDE)))


def layout_descriptors(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Descriptors of image files (zero rows where decoding failed) and the failures as (row, reason)."""
    out = np.zeros((len(paths), DIM), np.float32)
    failed = []
    for row, path in enumerate(paths):
        try:
            out[row] = file_layout(path)
        except ImageLoadError as exc:
            failed.append((row, str(exc)))
    return out, failed
