"""Painted renders for the deep-zoom tests and bench: gradients and a checkerboard, so every tile differs."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from web_support import record

from catalogue import Catalogue


def painted(width: int, height: int, square: int = 64) -> Image.Image:
    """Red grows left to right, green top to bottom, blue squares of `square` px: a tile's place shows."""
    x = np.arange(width, dtype=np.uint32)[None, :]
    y = np.arange(height, dtype=np.uint32)[:, None]
    red = np.broadcast_to(x * 255 // max(width - 1, 1), (height, width))
    green = np.broadcast_to(y * 255 // max(height - 1, 1), (height, width))
    blue = (((x // square) + (y // square)) % 2) * 160 + 40
    return Image.fromarray(np.stack([red, green, np.broadcast_to(blue, (height, width))], axis=-1).astype(np.uint8))


def painted_png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    painted(width, height).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def ingest_painted(cat: Catalogue, asset_id: str, seed: int, width: int, height: int, **overrides) -> str:
    """Plan, claim and ingest one painted render (as web_support.make_render does a solid one)."""
    rec = record(asset_id, seed, width=width, height=height, **overrides)
    submission = cat.create_submission(rec["team"], rec["project"], rec["manifest_path"], "0" * 64, 1)
    cat.plan_jobs(submission, [rec])
    assert cat.claim(rec["key"], "w1", 600)
    full = {**rec, "engine": {"name": "tiny", "attention": "linear"}, "timings": {"render_s": 0.1}}
    return cat.ingest(rec["key"], painted_png(width, height), full, "w1")
