"""PNG metadata: A1111 `parameters` as readers parse it, our JSON chunk, splicing without re-encoding."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from catalogue.pngmeta import (
    PngFormatError,
    a1111_parameters,
    embed_render_metadata,
    iter_chunks,
    png_size,
    read_png_record,
)
from catalogue.thumbs import make_thumbnail
from linstudio_jobs import JobSpec


def _png(size=(48, 32), mode="RGB", color=(10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _parse_a1111(text: str) -> tuple[str, str, dict[str, str]]:
    """The parsing A1111's `parse_generation_parameters` does, reduced to what we write."""
    *prompt_lines, settings = text.split("\n")
    negative = ""
    if prompt_lines and prompt_lines[-1].startswith("Negative prompt: "):
        negative = prompt_lines.pop()[len("Negative prompt: "):]
    fields: dict[str, str] = {}
    import re

    for key, value in re.findall(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', settings):
        fields[key.strip()] = json.loads(value) if value.startswith('"') else value
    return "\n".join(prompt_lines), negative, fields


RECORD = JobSpec(
    team="film", project="castle", asset_id="keyart", prompt="a castle, at dusk: wide shot",
    negative_prompt="text, watermark", seed=42, width=1024, height=768, steps=30, guidance=7.5, scheduler="euler_a",
    model="sd15", model_identity="sha256:" + "0f" * 32, attention="linear", strategy="sdedit", tileable=True,
    parent_render_id="01HXYZ").to_record()


def test_a1111_parameters_round_trip_through_an_a1111_style_parser():
    prompt, negative, fields = _parse_a1111(a1111_parameters(JobSpec.from_record(RECORD), 1024, 768))
    assert prompt == "a castle, at dusk: wide shot"
    assert negative == "text, watermark"
    assert fields["Steps"] == "30" and fields["Sampler"] == "Euler a" and fields["CFG scale"] == "7.5"
    assert fields["Seed"] == "42" and fields["Size"] == "1024x768" and fields["Model"] == "sd15"
    assert fields["Model hash"] == "0f0f0f0f0f" and fields["Tiling"] == "True"
    assert fields["Model identity"] == "sha256:" + "0f" * 32  # quoted: it holds a colon
    assert fields["Parent render"] == "01HXYZ" and fields["Job key"] == RECORD["key"]
    assert fields["Attention"] == "linear" and fields["Strategy"] == "sdedit"


def test_empty_negative_prompt_line_is_left_out():
    text = a1111_parameters(JobSpec.from_record({**RECORD, "negative_prompt": ""}), 8, 8)
    assert "Negative prompt" not in text and text.count("\n") == 1


def test_pillow_reads_both_chunks_and_the_pixels_are_untouched():
    original = _png()
    embedded = embed_render_metadata(original, RECORD)
    image = Image.open(io.BytesIO(embedded))
    assert image.text["parameters"].startswith("a castle, at dusk: wide shot\n")
    assert json.loads(image.text["linstudio"]) == RECORD
    assert image.tobytes() == Image.open(io.BytesIO(original)).tobytes()
    assert read_png_record(embedded) == RECORD


def test_unicode_prompts_survive_in_an_itxt_chunk():
    record = {**RECORD, "prompt": "夜の東京、ネオン — café"}
    embedded = embed_render_metadata(_png(), record)
    assert Image.open(io.BytesIO(embedded)).text["parameters"].startswith("夜の東京、ネオン — café\n")
    kinds = [kind for kind, _ in iter_chunks(embedded)]
    assert kinds.count(b"iTXt") == 2  # parameters (non-Latin-1) and linstudio (compressed)


def test_embedding_twice_replaces_rather_than_duplicates():
    once = embed_render_metadata(_png(), RECORD)
    twice = embed_render_metadata(once, {**RECORD, "seed": 7})
    kinds = [kind for kind, _ in iter_chunks(twice)]
    assert kinds.count(b"tEXt") + kinds.count(b"iTXt") == 2
    assert read_png_record(twice)["seed"] == 7
    assert "Seed: 7," in Image.open(io.BytesIO(twice)).text["parameters"]


def test_other_text_chunks_are_kept():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", "some engine")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    embedded = embed_render_metadata(buffer.getvalue(), RECORD)
    assert Image.open(io.BytesIO(embedded)).text["Software"] == "some engine"


def test_bad_bytes_are_named():
    with pytest.raises(PngFormatError, match="bad signature"):
        png_size(b"\xff\xd8\xff\xe0 jpeg")
    with pytest.raises(PngFormatError, match="truncated"):
        png_size(_png()[:20])
    with pytest.raises(KeyError, match="no 'linstudio' text chunk"):
        read_png_record(_png())


def test_thumbnail_of_a_wide_grey_image():
    thumb = Image.open(io.BytesIO(make_thumbnail(_png(size=(1000, 100), mode="L", color=128))))
    assert thumb.format == "WEBP" and thumb.size == (256, 26) and thumb.mode == "RGB"
