"""Delivery: copy renders out of the catalogue to a folder or an S3 prefix, named by a template.

Formats: PNG (8 or 16 bit), TIFF, JPEG, WebP. With `keep_metadata`, the A1111 `parameters` text
(what most tools read) goes where each format keeps text — PNG tEXt chunks (plus the full JSON
record), the TIFF ImageDescription tag, EXIF ImageDescription for JPEG and WebP; without it the
file carries pixels only (what a client delivery usually wants).

Pillow cannot write 16-bit RGB PNGs, so that one is encoded here: each 8-bit value v becomes
v * 257 (0 -> 0, 255 -> 65535), which is exact, not an upscale of information.

Names come from a template over the render's fields, e.g. the default
`{team}/{project}/{asset_id}_{seed}_{width}x{height}`; each field is made file-name-safe, so a
prompt or asset id can never climb out of the destination.
"""

from __future__ import annotations

import io
import re
import string
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from catalogue.errors import CatalogueError
from catalogue.pngmeta import a1111_parameters, embed_render_metadata, read_texts, text_chunk
from catalogue.store import FileStore, ObjectStore, open_store

FORMATS = {"png8": "png", "png16": "png", "tiff": "tif", "jpeg": "jpg", "webp": "webp"}
CONTENT_TYPES = {"png": "image/png", "tif": "image/tiff", "jpg": "image/jpeg", "webp": "image/webp"}
DEFAULT_TEMPLATE = "{team}/{project}/{asset_id}_{seed}_{width}x{height}"
TEMPLATE_FIELDS = ("render_id", "team", "project", "asset_id", "seed", "width", "height", "model", "steps",
                   "scheduler", "job_key", "review_status")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
EXIF_IMAGE_DESCRIPTION = 0x010E


class ExportError(CatalogueError, ValueError):
    """An export that cannot run as asked; the message names the option or render."""


@dataclass(frozen=True)
class ExportOptions:
    """How to deliver: destination (folder path, file:// or s3:// URL), format, naming, metadata."""

    destination: str
    format: str = "png8"
    template: str = DEFAULT_TEMPLATE
    keep_metadata: bool = True
    quality: int = 92

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ExportError(f"format {self.format!r}: choose one of {', '.join(FORMATS)}")
        check_template(self.template)
        if not 1 <= self.quality <= 100:
            raise ExportError(f"quality {self.quality}: must be between 1 and 100")


def check_template(template: str) -> None:
    """Refuse templates naming unknown fields or using format specs/attribute access."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ExportError(f"naming template {template!r}: {exc}") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in TEMPLATE_FIELDS or spec or conversion:
            raise ExportError(f"naming template {template!r}: {{{field}}} is not one of "
                              f"{', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}")
    if not any(field for _, field, _, _ in parsed):
        raise ExportError(f"naming template {template!r}: must use at least one field, e.g. {{render_id}}")


def export_name(template: str, render: Mapping[str, Any], extension: str) -> str:
    """The relative object key for `render`: each field made safe, each path segment non-empty."""
    safe = {name: _UNSAFE.sub("_", str(render.get(name, "")))[:120].strip("._") or "_" for name in TEMPLATE_FIELDS}
    name = template.format_map(safe)
    segments = [_UNSAFE.sub("_", part).strip("._") or "_" for part in name.split("/") if part not in ("", ".", "..")]
    return "/".join(segments) + "." + extension


def open_destination(destination: str) -> ObjectStore:
    """A store for a folder path or a file:// / s3:// URL."""
    if "://" in destination:
        return open_store(destination)
    return FileStore(Path(destination))


def convert(png: bytes, render: Mapping[str, Any], options: ExportOptions) -> bytes:
    """The catalogued PNG `png` re-encoded as `options.format`, with or without its metadata."""
    texts = read_texts(png)
    parameters = texts.get("parameters") or a1111_parameters(render, render["width"], render["height"])
    image = Image.open(io.BytesIO(png))
    image.load()
    rgb = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    out = io.BytesIO()
    if options.format == "png8":
        if options.keep_metadata and image.mode in ("RGB", "RGBA"):
            return png  # already an 8-bit PNG carrying the parameters and the full record: deliver as is
        rgb.save(out, format="PNG")
        return embed_render_metadata(out.getvalue(), render) if options.keep_metadata else out.getvalue()
    if options.format == "png16":
        return png16(rgb, {"parameters": parameters} if options.keep_metadata else {})
    if options.format == "tiff":
        info = {270: parameters} if options.keep_metadata else {}
        rgb.save(out, format="TIFF", compression="tiff_deflate", tiffinfo=info)
        return out.getvalue()
    extra = {}
    if options.keep_metadata:
        exif = Image.Exif()
        exif[EXIF_IMAGE_DESCRIPTION] = parameters
        extra["exif"] = exif.tobytes()
    if options.format == "jpeg":
        rgb.convert("RGB").save(out, format="JPEG", quality=options.quality, **extra)
    else:
        rgb.save(out, format="WEBP", quality=options.quality, **extra)
    return out.getvalue()


def png16(image: Image.Image, texts: Mapping[str, str]) -> bytes:
    """A 16-bit-per-channel PNG of an 8-bit RGB(A) image (v -> v * 257), with tEXt chunks `texts`."""
    pixels = np.asarray(image, dtype=np.uint16) * 257  # (H, W, C) 8-bit values spread over 16 bits
    height, width, channels = pixels.shape
    rows = pixels.astype(">u2").view(np.uint8).reshape(height, width * channels * 2)  # (H, W*C*2) big-endian
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # (H, 1 + W*C*2): filter 0
    colour_type = 6 if channels == 4 else 2
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    chunks = [_chunk(b"IHDR", header)]
    chunks += [text_chunk(key, value) for key, value in texts.items()]
    chunks.append(_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6)))
    chunks.append(_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def export_renders(source: ObjectStore, renders: Iterable[Mapping[str, Any]], options: ExportOptions) -> list[str]:
    """Write every render to the destination; returns the URIs written. Two renders that would get
    the same name are refused before anything is written (a silent overwrite would lose a delivery)."""
    renders = list(renders)
    extension = FORMATS[options.format]
    names = [export_name(options.template, render, extension) for render in renders]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise ExportError(f"naming template {options.template!r} gives several renders the same name "
                          f"({', '.join(clashes[:3])}); add {{seed}} or {{render_id}}")
    destination = open_destination(options.destination)
    written = []
    for render, name in zip(renders, names, strict=True):
        data = convert(source.get(render["object_key"]), render, options)
        destination.put(name, data, CONTENT_TYPES[extension])
        written.append(destination.uri(name))
    return written
