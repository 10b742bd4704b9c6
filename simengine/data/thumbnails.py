"""Small JPEG thumbnails: for the web app's gallery, and as data: URLs for the self-contained HTML reports (dedup,
curation), pages that work offline, sent as one file, and show nothing they did not embed."""

from __future__ import annotations

import base64
import html
import io

from simengine.errors import ImageLoadError

THUMBNAIL_PX = 160


def thumbnail_jpeg(path: str, px: int = THUMBNAIL_PX) -> bytes:
    """A JPEG of the image within px x px; raises ImageLoadError when it cannot be read."""
    from simengine.data.decode import load_rgb

    img = load_rgb(path, draft_size=(px, px))
    img.thumbnail((px, px))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def thumbnail_url(path: str, px: int = THUMBNAIL_PX) -> str:
    """A data: URL of a small JPEG of the image, or '' when it cannot be read any more."""
    try:
        return "data:image/jpeg;base64," + base64.b64encode(thumbnail_jpeg(path, px)).decode()
    except ImageLoadError:
        return ""


def figure(path: str, caption: str, css: str, budget: list[int]) -> str:
    """An escaped <figure>: the thumbnail while `budget[0]` (decremented) lasts, the caption, the path."""
    e = html.escape
    thumbnail = ""
    if budget[0] > 0:
        budget[0] -= 1
        thumbnail = thumbnail_url(path)
    picture = f"<img src='{thumbnail}' alt=''>" if thumbnail else ""
    return f"<figure class='{css}'>{picture}<figcaption>{e(caption)}<br>{e(path)}</figcaption></figure>"
