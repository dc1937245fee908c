"""Small WebP thumbnails for the gallery, made from the full PNG.

Pillow refuses to open images above ~179 M pixels (its decompression-bomb guard), and LinFusion's
point is 16K renders (268 M pixels). Our own renders are trusted input, so the guard is lifted for
images up to `MAX_TRUSTED_PIXELS` only — checked from the PNG header before any decoding — under a
lock, because the limit is a Pillow module global shared by every thread.
"""

from __future__ import annotations

import io
import threading

from PIL import Image

from catalogue.pngmeta import png_size

THUMB_MAX_SIDE = 256
THUMB_QUALITY = 80
THUMB_CONTENT_TYPE = "image/webp"
MAX_TRUSTED_PIXELS = 32768 * 32768

# Pillow's decompression-bomb limit is one global: whoever lifts it for a large render (thumbnails,
# exports) holds this lock while the file is opened.
PILLOW_LIMIT_LOCK = threading.Lock()


def make_thumbnail(png: bytes, max_side: int = THUMB_MAX_SIDE) -> bytes:
    """A WebP no larger than `max_side` on its longer side, aspect ratio kept, alpha kept if any."""
    width, height = png_size(png)
    if width * height > MAX_TRUSTED_PIXELS:
        raise ValueError(f"render of {width}x{height} exceeds the {MAX_TRUSTED_PIXELS} pixel limit for thumbnails")
    with PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_TRUSTED_PIXELS
        try:
            image = Image.open(io.BytesIO(png))
            image.load()
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with image:
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        thumb = image.convert("RGBA" if has_alpha else "RGB")
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    thumb.save(out, format="WEBP", quality=THUMB_QUALITY, method=4)
    return out.getvalue()
