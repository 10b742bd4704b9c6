"""Safe image decoding: every failure becomes an ImageLoadError with a reason, never a crash."""

from __future__ import annotations

import functools
import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from simengine.errors import ImageLoadError, UnsupportedImageError

# The largest image decoded (width x height), the same default in the CLI, the library and the service: a 40 MP
# photo decodes to 120 MB of RGB. Pillow's own bomb limit (89 MP, errors beyond twice that) stays in force too.
MAX_PIXELS = 40_000_000

# What the HTTP service accepts and serves: the formats browsers and cameras produce. Pillow opens many more (EPS
# even calls Ghostscript), which a server must not try on a stranger's bytes.
WEB_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
# Pillow renders EPS by running Ghostscript, an interpreter: never on the files of a collection, whatever their names.
GHOSTSCRIPT_FORMATS = ("EPS",)


@functools.cache
def local_formats() -> tuple[str, ...]:
    """The formats decoded from files: every one Pillow opens, but those it renders with Ghostscript."""
    Image.init()
    return tuple(f for f in Image.OPEN if f not in GHOSTSCRIPT_FORMATS)


def not_a_file_reason(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be opened as an image file (no such file, a directory, a symlink loop, ...), or None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:  # a symlink loop, a name too long, a permission on a parent folder
        return (exc.strerror or str(exc)).lower()
    if stat.S_ISDIR(mode):
        return "a directory, not an image file"
    return None if stat.S_ISREG(mode) else "not a regular file"


def load_rgb(source: str | os.PathLike | bytes, draft_size: tuple[int, int] | None = None,
             max_pixels: int = MAX_PIXELS, name: str | None = None,
             formats: tuple[str, ...] | None = None) -> Image.Image:
    """Decode an image file, or the bytes of one (an upload, decoded from memory), as RGB with EXIF orientation
    applied; raise ImageLoadError with the reason, prefixed by `name` (default: the path). Images of more than
    `max_pixels` are refused from the header, before any pixel is decoded; with `formats`, only those Pillow
    formats are tried (UnsupportedImageError otherwise)."""
    if isinstance(source, bytes):
        name, opened = name or "<bytes>", io.BytesIO(source)
    else:
        opened = Path(source)
        name = name or str(opened)
        if reason := not_a_file_reason(opened):
            raise ImageLoadError(f"{name}: {reason}")
    try:
        with warnings.catch_warnings():
            # Pillow raises past twice Image.MAX_IMAGE_PIXELS and only warns between 1x and 2x: refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(opened, formats=formats or local_formats()) as img:
                limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
                if img.width * img.height > limit:
                    raise ImageLoadError(f"{name}: image too large to decode safely ({img.width}x{img.height} px, "
                                         f"more than {limit:,})")
                if draft_size is not None and img.format == "JPEG":
                    # JPEG DCT scaling: decode at 1/2, 1/4, 1/8 size when that still covers draft_size.
                    img.draft("RGB", draft_size)
                img.load()
                bits = _png_grey_bits(opened) if img.format == "PNG" and img.mode.startswith("I;16") else None
                return as_rgb(img, draft_size, bits)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"{name}: image too large to decode safely ({exc})") from exc
    except PermissionError as exc:
        raise ImageLoadError(f"{name}: unreadable ({exc.strerror})") from exc
    except Image.UnidentifiedImageError as exc:
        if formats is not None:
            raise UnsupportedImageError(f"{name}: not an image in a supported format ({', '.join(formats)})") from exc
        raise ImageLoadError(f"{name}: {_unidentified(source)}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{name}: corrupt or truncated image ({exc})") from exc


def as_rgb(img: Image.Image, draft_size: tuple[int, int] | None = None, grey_bits: int | None = None) -> Image.Image:
    """A decoded picture in any mode as 8-bit RGB, its EXIF orientation applied; with `draft_size`, first shrunk
    by a whole factor while it still covers that size. `grey_bits`: the significant bits of 16-bit greys."""
    if draft_size is not None:
        img = _reduced(img, min(draft_size))
    return _to_rgb(ImageOps.exif_transpose(img), grey_bits)


POSTSCRIPT_MAGIC = (b"%!PS", b"\xc5\xd0\xd3\xc6")  # text PostScript, and DOS EPS binary


def _unidentified(source: str | os.PathLike | bytes) -> str:
    """What a file no reader recognised is, as far as its first bytes say."""
    if isinstance(source, bytes):
        head = source[:4]
    else:
        try:
            with open(source, "rb") as fh:
                head = fh.read(4)
        except OSError:
            head = b"?"
    if not head:
        return "an empty file"
    if head.startswith(POSTSCRIPT_MAGIC):
        return "EPS/PostScript, which is never rendered"
    return "not an image (or of a format Pillow cannot read)"


def _reduced(img: Image.Image, side: int) -> Image.Image:
    """The image shrunk by a whole factor, in its own mode, while its short side stays at least twice `side`: what
    comes after (alpha compositing, grey scaling, colour conversion) then costs what the result costs, not what a
    6300 x 6300 PNG costs (1.2 GB and 10 s before)."""
    factor = min(img.size) // (2 * side)
    if factor < 2:
        return img
    if img.mode.startswith("I;16"):  # Pillow cannot reduce it: a box mean in numpy, kept 16-bit
        values = np.asarray(img)
        h, w = (values.shape[0] // factor) * factor, (values.shape[1] // factor) * factor
        blocks = values[:h, :w].reshape(h // factor, factor, w // factor, factor)
        mean = blocks.mean(axis=(1, 3), dtype=np.float32)
        return Image.frombytes("I;16", mean.shape[::-1], np.rint(mean).astype("<u2").tobytes())
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    try:
        return img.reduce(factor)
    except ValueError:  # a mode Pillow cannot reduce: converted later at full size, as before
        return img


def _png_grey_bits(source: Path | io.BytesIO) -> int | None:
    """The significant bits of a PNG's grey samples, from its sBIT chunk (before the pixel data; Pillow does not
    read it); None without one. Cameras and scanners store 10-16-bit data in 16-bit PNGs this way."""
    fh = open(source, "rb") if isinstance(source, Path) else source
    try:
        fh.seek(8)  # the signature
        while header := fh.read(8):
            if len(header) < 8:
                return None
            length, kind = int.from_bytes(header[:4], "big"), header[4:]
            if kind in (b"IDAT", b"IEND"):
                return None
            if kind == b"sBIT":
                bits = fh.read(min(length, 4))[:1]
                return bits[0] if bits and 1 <= bits[0] <= 16 else None
            fh.seek(length + 4, io.SEEK_CUR)  # the data and its CRC
        return None
    finally:
        if fh is not source:
            fh.close()


def _to_rgb(img: Image.Image, grey_bits: int | None = None) -> Image.Image:
    """Any mode Pillow opens, as 8-bit RGB: alpha flattened onto white, high bit depths scaled (Pillow's own convert
    clips them: a 16-bit photo came out white); the rest (CMYK, LAB, YCbCr, palettes, ...) by Pillow's convert."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _grey_to_8bit(img, grey_bits).convert("RGB")
    return img.convert("RGB")


def _grey_to_8bit(img: Image.Image, bits: int | None = None) -> Image.Image:
    """16-bit greys scaled from 0..65535, or from 0..2^bits - 1 when the file says only `bits` are significant and
    no value goes beyond (a file that scaled its samples up, as the PNG standard asks, keeps 0..65535). 32-bit
    integer and float greys carry no range, so it is read from their values: up to 1.0 (floats) is 0..1, up to 255
    is 8-bit, up to 65535 is 16-bit, beyond that the maximum."""
    values = np.asarray(img, dtype=np.float64)
    values = np.where(np.isfinite(values), values, 0.0)
    if img.mode.startswith("I;16"):
        top = 65535.0
        if bits is not None and bits < 16 and values.max(initial=0.0) <= 2**bits - 1:
            top = 2.0**bits - 1
    else:
        peak = float(values.max(initial=0.0))
        top = 1.0 if img.mode == "F" and peak <= 1.0 else 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    return Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8))


def image_format(path: str | os.PathLike, formats: tuple[str, ...] = WEB_FORMATS) -> str | None:
    """The Pillow format name of an image file, read from its header (never from its name), when it is one of
    `formats`; else None."""
    try:
        with Image.open(path, formats=formats) as img:
            return img.format
    except Exception:
        return None


def image_size(path: str | os.PathLike) -> tuple[int | None, int | None]:
    """(width, height) from the file header, or (None, None) when it cannot be read."""
    try:
        with Image.open(path, formats=local_formats()) as img:
            return img.size
    except Exception:
        return None, None
