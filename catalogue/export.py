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

16K renders (268 M pixels) are above Pillow's decompression-bomb limit; catalogued renders are our
own, so they are opened with the limit lifted to catalogue.thumbs.MAX_TRUSTED_PIXELS (checked
from the PNG header first). A format that cannot hold a render's size (WebP stops at 16383 px a
side) is refused, naming the render, before anything is written. The 16-bit PNG is encoded in bands
of rows, so a 16K png16 export needs the decoded image plus a band, not several copies of it.
"""

from __future__ import annotations

import io
import re
import string
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from catalogue.errors import CatalogueError
from catalogue.pngmeta import a1111_parameters, embed_render_metadata, png_size, read_texts, text_chunk
from catalogue.store import FileStore, ObjectStore, open_store
from catalogue.thumbs import MAX_TRUSTED_PIXELS
from catalogue.thumbs import PILLOW_LIMIT_LOCK  # one lock for Pillow's one global

FORMATS = {"png8": "png", "png16": "png", "tiff": "tif", "jpeg": "jpg", "webp": "webp"}
CONTENT_TYPES = {"png": "image/png", "tif": "image/tiff", "jpg": "image/jpeg", "webp": "image/webp"}
DEFAULT_TEMPLATE = "{team}/{project}/{asset_id}_{seed}_{width}x{height}"
TEMPLATE_FIELDS = ("render_id", "team", "project", "asset_id", "seed", "width", "height", "model", "steps",
                   "scheduler", "job_key", "review_status")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
EXIF_IMAGE_DESCRIPTION = 0x010E
MAX_SIDE = {"webp": 16383, "jpeg": 65535}  # what each format's encoder can hold, per side
PNG16_BAND_ROWS = 256  # rows encoded at a time by png16
IDAT_MAX = 1 << 30  # bytes per IDAT chunk (PNG allows up to 2**31 - 1)


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


def open_render(png: bytes) -> Image.Image:
    """A catalogued PNG decoded, up to MAX_TRUSTED_PIXELS (above Pillow's default bomb limit, for 16K)."""
    width, height = png_size(png)
    if width * height > MAX_TRUSTED_PIXELS:
        raise ExportError(f"render of {width}x{height} exceeds the {MAX_TRUSTED_PIXELS} pixel limit for exports")
    with PILLOW_LIMIT_LOCK:  # the limit is checked when the file is opened; decoding happens outside the lock
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_TRUSTED_PIXELS
        try:
            image = Image.open(io.BytesIO(png))
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    image.load()
    return image


def convert(png: bytes, render: Mapping[str, Any], options: ExportOptions) -> bytes:
    """The catalogued PNG `png` re-encoded as `options.format`, with or without its metadata."""
    texts = read_texts(png)
    parameters = texts.get("parameters") or a1111_parameters(render, render["width"], render["height"])
    if options.format == "png8" and options.keep_metadata and _is_8bit_rgb(png):
        return png  # already an 8-bit PNG carrying the parameters and the full record: deliver as is
    image = open_render(png)
    mode = "RGBA" if "A" in image.getbands() else "RGB"
    rgb = image if image.mode == mode else image.convert(mode)  # no second copy of a 16K image when already RGB
    out = io.BytesIO()
    if options.format == "png8":
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


def _is_8bit_rgb(png: bytes) -> bool:
    """Whether the PNG's header says 8 bits per channel, RGB or RGBA (IHDR: bit depth at 24, colour type at 25)."""
    return png[24] == 8 and png[25] in (2, 6)


def png16(image: Image.Image, texts: Mapping[str, str]) -> bytes:
    """A 16-bit-per-channel PNG of an 8-bit RGB(A) image (v -> v * 257), with tEXt chunks `texts`.

    Encoded PNG16_BAND_ROWS rows at a time into one zlib stream, so memory is the image plus a band.
    """
    width, height = image.size
    channels = len(image.getbands())
    compressor = zlib.compressobj(6)
    pieces = []
    for top in range(0, height, PNG16_BAND_ROWS):
        band = np.asarray(image.crop((0, top, width, min(height, top + PNG16_BAND_ROWS))), dtype=np.uint16)
        band = band.reshape(band.shape[0], width, channels) * 257  # (h, W, C) 8-bit values spread over 16 bits
        rows = band.astype(">u2").view(np.uint8).reshape(band.shape[0], width * channels * 2)  # (h, W*C*2)
        scanlines = np.concatenate([np.zeros((band.shape[0], 1), np.uint8), rows], axis=1)  # (h, 1 + W*C*2)
        pieces.append(compressor.compress(scanlines.tobytes()))  # filter byte 0 starts each row
    pieces.append(compressor.flush())
    stream = b"".join(pieces)
    colour_type = 6 if channels == 4 else 2
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    chunks = [_chunk(b"IHDR", header)]
    chunks += [text_chunk(key, value) for key, value in texts.items()]
    chunks += [_chunk(b"IDAT", stream[start:start + IDAT_MAX]) for start in range(0, len(stream), IDAT_MAX)]
    chunks.append(_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def plan_names(renders: Iterable[Mapping[str, Any]], options: ExportOptions) -> list[str]:
    """The name each render gets, after refusing what cannot be delivered: two renders the template
    gives the same name (a silent overwrite would lose a delivery), or a render too big for the format.
    Cheap (rows only), so the gallery asks it before queueing an export."""
    renders = list(renders)
    extension = FORMATS[options.format]
    limit = MAX_SIDE.get(options.format)
    for render in renders:
        if limit and max(render["width"], render["height"]) > limit:
            raise ExportError(f"render {render['render_id']} is {render['width']}x{render['height']}: {options.format} "
                              f"holds at most {limit} px a side; choose png8, png16 or tiff")
    names = [export_name(options.template, render, extension) for render in renders]
    seen, clashes = set(), set()
    for name in names:
        (clashes if name in seen else seen).add(name)
    if clashes:
        raise ExportError(f"naming template {options.template!r} gives several renders the same name "
                          f"({', '.join(sorted(clashes)[:3])}); add {{seed}} or {{render_id}}")
    return names


def export_renders(source: ObjectStore, renders: Iterable[Mapping[str, Any]], options: ExportOptions,
                   on_progress: Callable[[int, str], None] | None = None) -> list[str]:
    """Write every render to the destination; returns the URIs written. Nothing is written when
    `plan_names` refuses the selection. `on_progress(files_written, uri)` is called after each file
    (the gallery's export workers record progress and notice a shutdown there)."""
    renders = list(renders)
    names = plan_names(renders, options)
    content_type = CONTENT_TYPES[FORMATS[options.format]]
    destination = open_destination(options.destination)
    written = []
    for render, name in zip(renders, names, strict=True):
        data = convert(source.get(render["object_key"]), render, options)
        destination.put(name, data, content_type)
        written.append(destination.uri(name))
        if on_progress is not None:
            on_progress(len(written), written[-1])
    return written
