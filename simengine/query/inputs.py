"""What a question may be asked about: an image in whatever form a Python user holds it, or an indexed item.

- a path (`str` or `os.PathLike`): decoded from disk, many at once in parallel;
- an indexed item: an `int`, or `"id:N"`;
- a picture in memory: a `PIL.Image.Image`; a numpy array (H x W greys, or H x W x 1/3/4 channels, as uint8 or as
  floats in [0, 1]); the `bytes` of an image file; a binary file object (read to its end);
- `Embedded`: a vector made already (the service embeds uploads of many requests together).

Messages and results name an input briefly (its kind, size, and the start of a path), never by its whole repr.
"""

from __future__ import annotations

import io
import os
from typing import Any, BinaryIO, Union

import numpy as np
from PIL import Image

from simengine.data.decode import as_rgb
from simengine.errors import ImageLoadError, SimengineError
from simengine.index.items import ID_PREFIX
from simengine.query.refs import Embedded

ImageInput = Union[str, os.PathLike, int, bytes, BinaryIO, Image.Image, np.ndarray, Embedded]

LONGEST_PATH = 4096  # PATH_MAX on Linux: a longer str is text or data passed by mistake, not a file name
SHOWN_CHARS = 60
ARRAY_CHANNELS = (1, 3, 4)
KINDS = "a path, a PIL image, a numpy array, the bytes of an image file, a binary file object or an indexed id"


def reference(image: Any) -> str | None:
    """The path or `id:N` string of an input read by reference (None for a picture in memory or an Embedded);
    a clear one-line error for what is none of the accepted kinds."""
    if isinstance(image, bool):
        raise SimengineError(f"{describe(image)}: not an image; give {KINDS}")
    if isinstance(image, (int, np.integer)):
        return f"{ID_PREFIX}{int(image)}"
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str):
        if len(image) > LONGEST_PATH or "\x00" in image:
            raise SimengineError(f"{describe(image)}: not a path (too long, or holds a NUL); give {KINDS}")
        return image
    if isinstance(image, (Embedded, Image.Image, np.ndarray, bytes, bytearray, memoryview)) or _is_binary_file(image):
        return None
    raise SimengineError(f"{describe(image)}: not an image; give {KINDS}")


def describe(image: Any) -> str:
    """A short name for an input, for results and messages."""
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str):
        return image if len(image) <= 200 else f"<str of {len(image):,} characters: {image[:SHOWN_CHARS]!r}...>"
    if isinstance(image, Embedded):
        return image.name
    if isinstance(image, Image.Image):
        return f"<PIL image {image.width}x{image.height} {image.mode}>"
    if isinstance(image, np.ndarray):
        return f"<array {image.dtype} {tuple(image.shape)}>"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"<{len(image):,} bytes>"
    if _is_binary_file(image):
        name = getattr(image, "name", None)
        return f"<file {name}>" if isinstance(name, str) else "<file object>"
    return f"<{type(image).__name__}>"


def picture_array(image: Any, encoder) -> np.ndarray:
    """A picture in memory (see the module's list) decoded and preprocessed for `encoder`, as one CHW float32 array;
    every failure is one ImageLoadError that names the input briefly."""
    name = describe(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return encoder.load_image(bytes(image), name=name)
    if _is_binary_file(image):
        data = image.read()
        if not isinstance(data, bytes):
            raise ImageLoadError(f"{name}: a file opened in text mode; open it with 'rb'")
        return encoder.load_image(data, name=name)
    picture = image if isinstance(image, Image.Image) else _array_picture(image, name)
    if picture.width * picture.height > encoder.max_pixels:
        raise ImageLoadError(f"{name}: image too large ({picture.width}x{picture.height} px, more than "
                             f"{encoder.max_pixels:,})")
    side = encoder.preprocess.resize_side
    try:
        return encoder.preprocess(as_rgb(picture, (side, side)))
    except (OSError, ValueError) as exc:
        raise ImageLoadError(f"{name}: cannot be read as a picture ({exc})") from None


def _array_picture(values: np.ndarray, name: str) -> Image.Image:
    """An H x W (x 1/3/4) array of uint8, or of floats in [0, 1], as a PIL image."""
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[:, :, 0]
    if not (values.ndim == 2 or (values.ndim == 3 and values.shape[2] in ARRAY_CHANNELS)) or 0 in values.shape:
        raise ImageLoadError(f"{name}: an image array is H x W or H x W x 1, 3 or 4 (channels last)")
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ImageLoadError(f"{name}: float arrays hold values in [0, 1]")
        values = np.rint(values * 255).astype(np.uint8)
    elif values.dtype != np.uint8:
        raise ImageLoadError(f"{name}: give uint8 values, or floats in [0, 1]")
    return Image.fromarray(np.ascontiguousarray(values))


def _is_binary_file(image: Any) -> bool:
    return isinstance(image, io.IOBase) or (hasattr(image, "read") and callable(image.read))
