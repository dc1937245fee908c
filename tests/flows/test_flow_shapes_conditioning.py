"""ControlNet and IP-Adapter visibly steer: `shapes-sd15`'s built-in conditioning, read by the analyzer.

One manifest through the flow on the production backend (PostgreSQL, S3), its control map and
reference image read from `s3://`, both attention modes:
- a seg map of a square on the right overrules a prompt asking for a circle on the left, and the
  prompt's colours stay;
- a reference image (a green circle on purple) gives a colour-less prompt its object and background
  colours, while the prompt's shape and place stay;
- the same prompt without the conditioning draws what the prompt says.
The render's metadata names the map and the reference by their sha256. Rates over hundreds of
prompts are in bench/quality_bench.py (docs/quality.md), not here.
"""

from __future__ import annotations

import hashlib
import io

import pytest
from flow_support import write_manifest
from PIL import Image

from flows.runs import run_manifests
from toy.analyzer import analyze
from toy.shapes import Scene, control_map, draw

pytestmark = pytest.mark.services

MAP_SCENE = Scene("white", "square", "right", "black")  # only its silhouette is used
REFERENCE_SCENE = Scene("green", "circle", "top", "purple")


def manifest_text(bucket: str) -> str:
    assets = []
    for attention in ("linear", "softmax"):
        assets.append(f"""
  - id: map-wins-{attention}
    prompt: "a red circle on the left, blue background"
    attention: {attention}
    controlnet: {{type: seg, image: "s3://{bucket}/inputs/square-right.png", scale: 1.0}}
  - id: reference-{attention}
    prompt: "a triangle at the bottom"
    attention: {attention}
    ip_adapter: {{images: ["s3://{bucket}/inputs/green-on-purple.png"], scale: 1.0}}
  - id: plain-{attention}
    prompt: "a red circle on the left, blue background"
    attention: {attention}""")
    return f"""
version: 1
team: game
project: steering
defaults: {{model: shapes-sd15, steps: 12, guidance: 3.0, sizes: [128x128], seeds: [1]}}
assets:{''.join(assets)}
"""


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("backend", ["production"], indirect=True)
def test_a_seg_map_and_a_reference_steer_a_render_and_without_them_the_prompt_does(backend, request, tmp_path):
    from catalogue import Catalogue
    from linstudio.settings import get_settings

    settings = get_settings()
    bucket = settings.resolved_store_url[len("s3://"):].split("/", 1)[0]
    control, reference = png_bytes(control_map(MAP_SCENE, 128, 128)), png_bytes(draw(REFERENCE_SCENE, 128, 128))
    s3 = request.getfixturevalue("s3_endpoint").client()
    s3.put_object(Bucket=bucket, Key="inputs/square-right.png", Body=control)
    s3.put_object(Bucket=bucket, Key="inputs/green-on-purple.png", Body=reference)

    summary = run_manifests([write_manifest(tmp_path, "steering.yaml", manifest_text(bucket))])
    assert summary.counts["rendered"] == 6, summary.counts
    catalogue = Catalogue.from_settings(settings)
    try:
        rows = {row["asset_id"]: catalogue.render(row["render_id"]) for row in catalogue.renders(limit=20)}

        def read(asset: str) -> tuple:
            image = Image.open(io.BytesIO(catalogue.store.get(rows[asset]["object_key"]))).convert("RGB")
            reading = analyze(image)
            return reading.color, reading.shape, reading.position, reading.background, reading.objects

        for attention in ("linear", "softmax"):
            assert read(f"map-wins-{attention}") == ("red", "square", "right", "blue", 1), attention
            # The colour-less prompt gets the reference's object and background colours; the prompt's
            # shape and place stay.
            assert read(f"reference-{attention}") == ("green", "triangle", "bottom", "purple", 1), attention
            assert read(f"plain-{attention}") == ("red", "circle", "left", "blue", 1), attention
            meta = rows[f"map-wins-{attention}"]["engine"]
            assert meta["attention"] == attention
            (used,) = meta["conditioning"]["controlnet"]
            assert used["type"] == "seg" and used["image"]["source"]["file_sha256"] == hashlib.sha256(control).hexdigest()
            (lent,) = rows[f"reference-{attention}"]["engine"]["conditioning"]["ip_adapter"]["images"]
            assert lent["source"]["file_sha256"] == hashlib.sha256(reference).hexdigest()
            assert rows[f"plain-{attention}"]["engine"]["conditioning"] == {}
    finally:
        catalogue.close()
