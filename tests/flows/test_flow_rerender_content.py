"""Re-renders keep what their source shows: the provenance test random weights could not make.

A `shapes-sd15` render is re-rendered at 2x through `linstudio rerender` and through the gallery's
re-render (plan + request in the catalogue, started by the dispatcher `linstudio serve` runs), and
the analyzer reads the same colour, shape, position and background in each child as in its source.
The backend does not change what the pixels show, so this runs on the embedded default only.
"""

from __future__ import annotations

import io

import pytest
from flow_support import write_manifest
from PIL import Image
from typer.testing import CliRunner

from flows.runs import render_planned_jobs, run_manifests
from linstudio.cli import app
from toy.analyzer import analyze

pytestmark = pytest.mark.services

SHAPES_JOB = """
version: 1
team: game
project: provenance
defaults: {model: shapes-sd15, steps: 12, guidance: 3.0, sizes: [128x128]}
assets:
  - id: circle
    prompt: "a red circle on the left, blue background"
    seeds: [1, 2]
"""


def attributes(reading) -> tuple:
    return reading.color, reading.shape, reading.position, reading.background


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_a_2x_rerender_keeps_colour_shape_and_position_from_the_cli_and_the_gallery(prefect_api, backend, tmp_path):
    from catalogue import Catalogue
    from catalogue.web import actions
    from flows.requests import RerenderDispatcher
    from linstudio.settings import get_settings

    assert run_manifests([write_manifest(tmp_path, "shapes.yaml", SHAPES_JOB)]).counts["rendered"] == 2
    settings = get_settings()
    catalogue = Catalogue.from_settings(settings)

    def image(row) -> Image.Image:
        return Image.open(io.BytesIO(catalogue.store.get(row["object_key"]))).convert("RGB")

    try:
        first, second = sorted(catalogue.renders(limit=10), key=lambda row: row["seed"])
        assert attributes(analyze(image(first))) == ("red", "circle", "left", "blue")

        result = CliRunner().invoke(app, ["rerender", "--render", first["render_id"], "--size", "256x256"])
        assert result.exit_code == 0 and "1 rendered" in result.output, result.output
        (key,) = actions.rerender(catalogue, second["render_id"], [(256, 256)], "alice")
        dispatcher = RerenderDispatcher(catalogue, start=lambda keys: render_planned_jobs(keys, settings))
        assert len(dispatcher.dispatch_waiting()) == 1
        assert catalogue.job_states([key]) == {key: "done"}

        for source in (first, second):
            (child,) = [r for r in catalogue.renders(limit=10) if r["parent_render_id"] == source["render_id"]]
            assert (child["width"], child["height"]) == (256, 256)
            reading = analyze(image(child))
            assert attributes(reading) == attributes(analyze(image(source))) and reading.objects == 1
    finally:
        catalogue.close()
