"""`projection: equirectangular`: a 2:1 VR panorama that wraps on x, in the job key and the metadata."""

from __future__ import annotations

import io

from PIL import Image

from catalogue.pngmeta import embed_render_metadata, read_png_record
from linstudio.settings import get_settings
from manifests import expand_jobs, load_manifests

PANORAMA = """\
version: 1
team: vr
project: skies
defaults: {model: tiny-sd15, steps: 2, seeds: [1]}
assets:
  - id: dusk-sky
    prompt: "a dusk sky over a desert"
    sizes: [256x128]
    projection: equirectangular
  - id: flat-sky
    prompt: "a dusk sky over a desert"
    sizes: [256x128]
    tileable: x
"""


def _load(tmp_path, text):
    path = tmp_path / "skies.yaml"
    path.write_text(text)
    return load_manifests([path], settings=get_settings())


def test_an_equirectangular_asset_wraps_on_x_and_its_key_says_so(tmp_path):
    (loaded,) = _load(tmp_path, PANORAMA).manifests
    panorama, flat = expand_jobs(loaded)
    assert (panorama.projection, panorama.tileable) == ("equirectangular", "x")
    assert flat.projection is None and "projection" not in flat.key_fields()  # older keys stay what they were
    assert panorama.key_fields()["projection"] == "equirectangular"
    # The same pixels asked for as a flat strip are another job: the projection is part of what was asked.
    assert {k: v for k, v in panorama.key_fields().items() if k not in ("asset_id", "projection")} == {
        k: v for k, v in flat.key_fields().items() if k != "asset_id"}
    assert panorama.key != flat.key


def test_the_projection_travels_in_the_png_metadata(tmp_path):
    (loaded,) = _load(tmp_path, PANORAMA).manifests
    record = expand_jobs(loaded)[0].to_record()
    buffer = io.BytesIO()
    Image.new("RGB", (256, 128)).save(buffer, format="PNG")
    assert read_png_record(embed_render_metadata(buffer.getvalue(), record))["projection"] == "equirectangular"


def test_a_panorama_that_is_not_2_to_1_or_wraps_otherwise_names_the_field(tmp_path):
    text = PANORAMA.replace("sizes: [256x128]\n    projection", "sizes: [128x128, 256x128]\n    projection", 1)
    text += "  - id: tiled-sky\n    prompt: a sky\n    sizes: [256x128]\n    projection: equirectangular\n    tileable: y\n"
    errors = [str(e) for e in _load(tmp_path, text).errors]
    assert any(":9 assets[0].projection: projection equirectangular: an equirectangular panorama is 2:1 "
               "(360 by 180 degrees); 128x128 is not" in e for e in errors), errors
    assert any(":18 assets[2].tileable: tileable y: projection equirectangular wraps on x only" in e
               for e in errors), errors
    assert len(errors) == 2


def test_projection_is_in_the_manifest_schema(tmp_path):
    errors = [str(e) for e in _load(tmp_path, PANORAMA.replace("equirectangular", "cubemap")).errors]
    assert len(errors) == 1 and "assets[0].projection" in errors[0] and "equirectangular" in errors[0]
