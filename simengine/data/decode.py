"""Safe image decoding: every failure becomes an ImageLoadError with a reason, never a crash."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from simengine.errors import ImageLoadError


def load_rgb(path: str | os.PathLike, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image as RGB, EXIF orientation applied; raise ImageLoadError with the reason."""
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ImageLoadError(f"{path}: not a regular file")
    try:
        with warnings.catch_warnings():
            # Pillow raises past twice Image.MAX_IMAGE_PIXELS and only warns between 1x and 2x: refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > Image.MAX_IMAGE_PIXELS:
                    raise ImageLoadError(
                        f"{path}: image too large to decode safely ({img.width}x{img.height} px)"
                    )
                if draft_size is not None and img.format == "JPEG":
                    # JPEG DCT scaling: decode at 1/2, 1/4, 1/8 size when that still covers draft_size.
                    img.draft("RGB", draft_size)
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"{path}: image too large to decode safely ({exc})") from exc
    except PermissionError as exc:
        raise ImageLoadError(f"{path}: unreadable ({exc.strerror})") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageLoadError(f"{path}: not an image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{path}: corrupt or truncated image ({exc})") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten alpha onto white and convert any mode (L, P, CMYK, I;16, ...) to RGB."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


def image_size(path: str | os.PathLike) -> tuple[int | None, int | None]:
    """(width, height) from the file header, or (None, None) when it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:
        return None, None
