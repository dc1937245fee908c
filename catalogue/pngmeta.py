"""Generation settings inside the PNG itself, readable by the tools artists already use.

Two text chunks are written:
- `parameters` — AUTOMATIC1111's format, which A1111/Forge "PNG Info", InvokeAI's importer, Civitai
  and most image browsers parse:
      <prompt>
      Negative prompt: <negative prompt>
      Steps: 30, Sampler: Euler, CFG scale: 7.5, Seed: 1, Size: 1024x1024, Model: sd15, ...
- `linstudio` — the full JSON record (compressed iTXt) under a key of our own; `prompt` and
  `workflow` are left alone because ComfyUI readers claim those and would choke on our JSON.

Chunks are spliced into the encoded PNG rather than re-encoding it through Pillow: a 16K render
would take seconds to decode and re-encode, and Pillow refuses images that large by default
(decompression-bomb guard). Pixels are never touched.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator, Mapping

from linstudio_jobs import JobSpec
from linstudio_settings import __version__

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PARAMETERS_KEY = "parameters"
RECORD_KEY = "linstudio"
_TEXT_CHUNKS = (b"tEXt", b"iTXt", b"zTXt")

# Our scheduler names -> the sampler names A1111-style readers show. Unknown names pass through.
_SAMPLER_NAMES = {
    "ddim": "DDIM",
    "pndm": "PLMS",
    "euler": "Euler",
    "euler_a": "Euler a",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "lms": "LMS",
    "dpmpp_2m": "DPM++ 2M",
    "dpm_solver": "DPM++ 2M",
    "dpmpp_sde": "DPM++ SDE",
    "unipc": "UniPC",
    "lcm": "LCM",
}


class PngFormatError(ValueError):
    """Bytes that are not a well-formed PNG (bad signature, truncated chunk, missing IHDR)."""


def iter_chunks(png: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, data) for every chunk, checking the signature and lengths (CRCs are left to decoders)."""
    if not png.startswith(PNG_SIGNATURE):
        raise PngFormatError("not a PNG: bad signature")
    offset = len(PNG_SIGNATURE)
    while offset < len(png):
        if offset + 8 > len(png):
            raise PngFormatError(f"truncated PNG: chunk header at byte {offset}")
        length, kind = struct.unpack(">I4s", png[offset : offset + 8])
        end = offset + 12 + length
        if end > len(png):
            raise PngFormatError(f"truncated PNG: {kind!r} chunk at byte {offset} runs past the end")
        yield kind, png[offset + 8 : offset + 8 + length]
        offset = end
        if kind == b"IEND":
            return
    raise PngFormatError("truncated PNG: no IEND chunk")


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, without decoding pixels."""
    for kind, data in iter_chunks(png):
        if kind == b"IHDR":
            return struct.unpack(">II", data[:8])
        break
    raise PngFormatError("PNG has no IHDR chunk first")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def text_chunk(key: str, text: str, compress: bool = False) -> bytes:
    """A tEXt chunk when `text` is Latin-1 and uncompressed (what A1111 writes), else an iTXt (UTF-8)."""
    keyword = key.encode("latin-1")
    if not compress:
        try:
            return _chunk(b"tEXt", keyword + b"\0" + text.encode("latin-1"))
        except UnicodeEncodeError:
            pass
    body = text.encode("utf-8")
    if compress:
        body = zlib.compress(body, 9)
    flag = b"\1\0" if compress else b"\0\0"
    return _chunk(b"iTXt", keyword + b"\0" + flag + b"\0" + b"\0" + body)


def _chunk_keyword(kind: bytes, data: bytes) -> str | None:
    if kind not in _TEXT_CHUNKS:
        return None
    return data.split(b"\0", 1)[0].decode("latin-1")


def embed_text(png: bytes, texts: Mapping[str, tuple[str, bool]]) -> bytes:
    """`png` with one text chunk per key (text, compress) right after IHDR; older chunks of those keys go."""
    out = [PNG_SIGNATURE]
    for kind, data in iter_chunks(png):
        if _chunk_keyword(kind, data) in texts:
            continue
        out.append(_chunk(kind, data))
        if kind == b"IHDR":
            out.extend(text_chunk(key, text, compress) for key, (text, compress) in texts.items())
    return b"".join(out)


def read_texts(png: bytes) -> dict[str, str]:
    """Every tEXt / iTXt / zTXt chunk as {keyword: text} (the first of a repeated keyword wins)."""
    texts: dict[str, str] = {}
    for kind, data in iter_chunks(png):
        key = _chunk_keyword(kind, data)
        if key is None or key in texts:
            continue
        rest = data[len(key) + 1 :]
        if kind == b"tEXt":
            texts[key] = rest.decode("latin-1")
        elif kind == b"zTXt":
            texts[key] = zlib.decompress(rest[1:]).decode("latin-1")
        else:
            compressed, _method = rest[0], rest[1]
            _language, _translated, body = rest[2:].split(b"\0", 2)
            texts[key] = (zlib.decompress(body) if compressed else body).decode("utf-8")
    return texts


def _quote(value: object) -> str:
    """A1111's quoting: values holding `,` `:` or a newline are written as JSON strings."""
    text = str(value)
    if any(ch in text for ch in ",:\n"):
        return json.dumps(text, ensure_ascii=False)
    return text


def _model_hash(identity: str | None) -> str | None:
    """A1111 shows a 10-hex-digit weights hash; take it from a hex identity (`sha256:abc...` or `abc...`)."""
    if not identity:
        return None
    digest = identity.split(":", 1)[-1].lower()
    if len(digest) >= 10 and all(ch in "0123456789abcdef" for ch in digest[:10]):
        return digest[:10]
    return None


def a1111_parameters(spec: JobSpec, width: int, height: int, *, attention_ran: str | None = None) -> str:
    """The A1111 `parameters` text for a render of `spec` (field order as A1111 writes it).

    `attention_ran`: the attention backend that actually ran (the engine's metadata), which says
    more than the mode the job asked for.
    """
    fields: list[tuple[str, object]] = [
        ("Steps", spec.steps),
        ("Sampler", _SAMPLER_NAMES.get(spec.scheduler.lower(), spec.scheduler)),
        ("CFG scale", spec.guidance),
        ("Seed", spec.seed),
        ("Size", f"{width}x{height}"),
    ]
    model_hash = _model_hash(spec.model_identity)
    if model_hash:
        fields.append(("Model hash", model_hash))
    fields.append(("Model", spec.model))
    if spec.model_identity:
        fields.append(("Model identity", spec.model_identity))
    if spec.tileable:  # True, or the axis ("x", "y") a manifest asked for
        fields.append(("Tiling", "True" if spec.tileable is True else spec.tileable))
    fields.append(("Attention", attention_ran or spec.attention))
    fields.append(("Strategy", spec.strategy))
    if spec.parent_render_id:
        fields.append(("Parent render", spec.parent_render_id))
    fields.append(("Job key", spec.key))
    fields.append(("Version", f"LinFusion Studio {__version__}"))
    lines = [spec.prompt]
    if spec.negative_prompt:
        lines.append(f"Negative prompt: {spec.negative_prompt}")
    lines.append(", ".join(f"{label}: {_quote(value)}" for label, value in fields))
    return "\n".join(lines)


def embed_render_metadata(png: bytes, record: Mapping) -> bytes:
    """`png` carrying the A1111 `parameters` text and the JSON `record` under `linstudio`.

    `record` is a job's stored record (`JobSpec.to_record()`) with what the render added (`engine`,
    `timings`, who and when); the A1111 text reads the spec it describes.
    """
    width, height = png_size(png)
    spec = JobSpec.from_record(record)
    engine = record.get("engine") if isinstance(record.get("engine"), Mapping) else {}
    payload = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
    parameters = a1111_parameters(spec, width, height, attention_ran=engine.get("attention"))
    return embed_text(png, {PARAMETERS_KEY: (parameters, False), RECORD_KEY: (payload, True)})


def read_png_record(png: bytes) -> dict:
    """The JSON record a catalogued PNG carries; PngFormatError / KeyError when it has none."""
    texts = read_texts(png)
    if RECORD_KEY not in texts:
        raise KeyError(f"PNG has no {RECORD_KEY!r} text chunk (not made by LinFusion Studio?)")
    return json.loads(texts[RECORD_KEY])
