"""Small JPEG thumbnails as data: URLs, for the self-contained HTML reports (dedup, curation): a page that works
offline, sent as one file, and shows nothing it did not embed."""

from __future__ import annotations

import base64
import html
import io

from simengine.errors import ImageLoadError

THUMBNAIL_PX = 160


def thumbnail_url(path: str, px: int = THUMBNAIL_PX) -> str:
    """A data: URL of a small JPEG of the image, or '' when it cannot be read any more."""
    from simengine.data.decode import load_rgb

    try:
        img = load_rgb(path, draft_size=(px, px))
    except ImageLoadError:
        return ""
    img.thumbnail((px, px))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def figure(path: str, caption: str, css: str, budget: list[int]) -> str:
    """An escaped <figure>: the thumbnail while `budget[0]` (decremented) lasts, the caption, the path."""
    e = html.escape
    thumbnail = ""
    if budget[0] > 0:
        budget[0] -= 1
        thumbnail = thumbnail_url(path)
    picture = f"<img src='{thumbnail}' alt=''>" if thumbnail else ""
    return f"<figure class='{css}'>{picture}<figcaption>{e(caption)}<br>{e(path)}</figcaption></figure>"
