"""Re-renders: a catalogued render at a new size, from its own image, pointing back to its source."""

from __future__ import annotations

import io

import pytest
from flow_support import write_manifest
from PIL import Image
from typer.testing import CliRunner

from flows.runs import run_manifests
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

        # Started from the source image, not from noise: the engine received the source's pixels as
        # its init image at the re-render strength, and the chain's first stage was image to image.
        # (Pixel distances would say nothing here: the tiny random-weight VAE does not reconstruct.)
        from linfusion_engine.conditioning.inputs import image_sha256

        engine = catalogue.render(child["render_id"])["engine"]
        init = engine["conditioning"]["init_image"]
        source_image = Image.open(io.BytesIO(catalogue.store.get(source["object_key"]))).convert("RGB")
        assert init["image"]["sha256"] == image_sha256(source_image)
        assert init["strength"] == pytest.approx(0.35)
        assert engine["stages"][0]["kind"] != "txt2img"
        assert (engine["stages"][-1]["width"], engine["stages"][-1]["height"]) == (128, 128)

        again = CliRunner().invoke(app, ["rerender", "--render", source["render_id"], "--size", "128x128"])
        assert again.exit_code == 0 and "0 rendered" in again.output and "1 skipped" in again.output
        assert catalogue.check().ok
    finally:
        catalogue.close()


def test_rerender_of_an_unknown_render_is_a_clear_error(prefect_api, backend):
    result = CliRunner().invoke(app, ["rerender", "--render", "NOPE", "--size", "128x128"])
    assert result.exit_code == 2
    assert "render 'NOPE' is not in the catalogue" in result.output


def test_a_rerender_asked_for_in_the_gallery_is_rendered_by_the_dispatchers_background_run(prefect_api, backend,
                                                                                          tmp_path):
    """The whole path a gallery button takes: plan + request (catalogue), dispatcher (flows), then the
    default start — no `rerender` deployment is registered, so a detached `python -m flows.runs`."""
    import time

    from catalogue import Catalogue
    from catalogue.web import actions
    from flows.requests import RerenderDispatcher
    from linstudio.settings import get_settings

    assert run_manifests([write_manifest(tmp_path, "hero.yaml", ONE_JOB)]).counts["rendered"] == 1
    catalogue = Catalogue.from_settings(get_settings())
    try:
        (source,) = catalogue.renders(limit=10)
        (key,) = actions.rerender(catalogue, source["render_id"], [(128, 128)], "alice")
        assert len(RerenderDispatcher(catalogue).dispatch_waiting()) == 1
        deadline = time.monotonic() + 240
        while catalogue.job_states([key])[key] != "done" and time.monotonic() < deadline:
            time.sleep(0.5)
        logs = "".join(p.read_text(errors="replace") for p in (get_settings().home / "logs").glob("rerender-*.log"))
        assert catalogue.job_states([key]) == {key: "done"}, logs[-3000:]
        (child,) = [r for r in catalogue.renders(limit=10) if r["parent_render_id"] == source["render_id"]]
        assert (child["width"], child["height"]) == (128, 128)
    finally:
        catalogue.close()


def test_a_gallery_rerender_goes_to_a_deployment_that_prefect_yaml_declares_for_jobs_by_key(monkeypatch):
    """With a Prefect server, the dispatcher's planned jobs go to `render-shard` on its interactive
    queue: a deployment that prefect.yaml declares, of a flow that takes those parameters (it once
    named one that did not exist, and every gallery re-render quietly fell back to a local process)."""
    import importlib
    import inspect
    from pathlib import Path

    import prefect.deployments
    import yaml

    from flows import rerender

    class Started:
        id = "flow-run-1"

    calls = []
    monkeypatch.setattr(prefect.deployments, "run_deployment",
                        lambda name, parameters, **options: calls.append((name, parameters, options)) or Started())
    assert rerender._run_deployment(["k1", "k2"])
    ((name, parameters, options),) = calls
    assert parameters["job_keys"] == ["k1", "k2"] and options["timeout"] == 0  # started, not awaited
    assert options["work_queue_name"] == "interactive"  # ahead of the nightly shards on the pool
    flow_name, deployment_name = name.split("/")
    declared = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())["deployments"]
    (deployment,) = [d for d in declared if d["name"] == deployment_name]
    path, function = deployment["entrypoint"].split(":")  # flows/deployments.py:render_jobs
    flow_object = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), function)
    assert flow_object.name == flow_name
    assert set(parameters) <= set(inspect.signature(flow_object.fn).parameters)
