"""Re-renders: a catalogued render at a new size, from its own image, pointing back to its source."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flow_support import write_manifest
from PIL import Image
from typer.testing import CliRunner

from flows.batch import run_manifests
from linstudio.cli import app

pytestmark = pytest.mark.services

ONE_JOB = """
version: 1
team: film
project: lineage
defaults: {model: tiny-sd15, steps: 4, sizes: [64x64]}
assets:
  - id: hero
    prompt: "a hero shot"
    seeds: [5]
    tags: [key-art]
"""


def _pixels(catalogue, render) -> np.ndarray:
    data = catalogue.store.get(render["object_key"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)


def test_rerender_keeps_the_composition_records_its_parent_and_is_idempotent(prefect_api, backend, tmp_path):
    from catalogue import Catalogue
    from linstudio.settings import get_settings

    manifest = write_manifest(tmp_path, "hero.yaml", ONE_JOB)
    assert run_manifests([manifest]).counts["rendered"] == 1
    settings = get_settings()
    catalogue = Catalogue.open(settings.resolved_database_url, settings.resolved_store_url)
    try:
        (source,) = catalogue.renders(limit=10)
        result = CliRunner().invoke(app, ["rerender", "--tag", "key-art", "--size", "128x128"])
        assert result.exit_code == 0, result.output
        assert "1 rendered" in result.output
        children = [r for r in catalogue.renders(limit=10) if r["parent_render_id"] == source["render_id"]]
        assert len(children) == 1
        child = children[0]
        assert (child["width"], child["height"]) == (128, 128)
        assert child["job_key"] != source["job_key"]

        # Started from the source image: closer to the upscaled source than a fresh render at that size.
        upscaled = np.asarray(Image.fromarray(_pixels(catalogue, source).astype(np.uint8)).resize(
            (128, 128), Image.Resampling.BICUBIC), dtype=np.float32)
        fresh_manifest = write_manifest(tmp_path, "fresh.yaml", ONE_JOB.replace("64x64", "128x128"))
        assert run_manifests([fresh_manifest]).counts["rendered"] == 1
        fresh = [r for r in catalogue.renders(limit=10) if r["width"] == 128 and not r["parent_render_id"]][0]
        distance_rerender = np.abs(_pixels(catalogue, child) - upscaled).mean()
        distance_fresh = np.abs(_pixels(catalogue, fresh) - upscaled).mean()
        assert distance_rerender < 0.6 * distance_fresh, (distance_rerender, distance_fresh)

        again = CliRunner().invoke(app, ["rerender", "--render", source["render_id"], "--size", "128x128"])
        assert again.exit_code == 0 and "0 rendered" in again.output and "1 skipped" in again.output
        assert catalogue.check().ok
    finally:
        catalogue.close()


def test_rerender_of_an_unknown_render_is_a_clear_error(prefect_api, backend):
    result = CliRunner().invoke(app, ["rerender", "--render", "NOPE", "--size", "128x128"])
    assert result.exit_code == 2
    assert "render 'NOPE' is not in the catalogue" in result.output
