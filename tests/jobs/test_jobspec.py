"""`JobSpec`: keys that do not move, records of every version, every pixel field reaching the engine."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from catalogue.rerenders import rerender_records
from flows.rendering import render_request
from linstudio_jobs import SPEC_VERSION, JobSpec, pixel_fields

ROOT = Path(__file__).resolve().parents[2]
# Job records and re-render records made by main before the typed spec (see its `made_by`).
BEFORE = json.loads((Path(__file__).parent / "keys_before_jobspec.json").read_text())


def _spec(**changes) -> JobSpec:
    base = JobSpec(team="film", project="night-city", asset_id="hero", prompt="a neon street", negative_prompt="blur",
                   seed=1, width=64, height=64, model_identity="abc", steps=2, guidance=7.5, scheduler="euler",
                   attention="linear", model="tiny-sd15")
    return dataclasses.replace(base, **changes)


def test_stored_records_of_the_old_main_keep_their_keys():
    assert len(BEFORE["jobs"]) >= 20 and any(r["conditioning"] for r in BEFORE["jobs"])
    for record in BEFORE["jobs"] + BEFORE["rerenders"]:
        assert JobSpec.from_record(record).key == record["key"], record["asset_id"]


def test_re_renders_of_old_records_get_the_keys_the_old_main_gave_them():
    for expected in BEFORE["rerenders"]:
        source = expected["_source"]
        (record,) = rerender_records(source, [(expected["width"], expected["height"])])
        assert record["key"] == expected["key"]
        assert {k: v for k, v in record.items() if k not in ("spec_version", "schedule", "projection")} == {
            k: v for k, v in expected.items() if k != "_source"}


def test_manifests_expand_to_the_keys_the_old_main_gave_them(tmp_path):
    """Where a model's files are what they were (its identity unchanged), the key is unchanged."""
    from linfusion_engine.registry import ModelRegistry
    from linstudio_settings import Settings
    from manifests.jobs import expand_jobs
    from manifests.load import load_manifests

    registry = ModelRegistry(tmp_path / "models.yaml", tmp_path / "models")
    paths = sorted({ROOT / r["manifest_path"] for r in BEFORE["jobs"]})
    loaded = load_manifests(paths, settings=Settings(home=tmp_path), registry=registry)
    assert not loaded.errors
    now = {(j.team, j.project, j.asset_id, j.width, j.height, j.seed): j for m in loaded.manifests
           for j in expand_jobs(m, registry)}
    compared = 0
    for record in BEFORE["jobs"]:
        job = now[(record["team"], record["project"], record["asset_id"], record["width"], record["height"],
                   record["seed"])]
        if job.model_identity == record["model_identity"]:
            assert job.key == record["key"], record["asset_id"]
            compared += 1
    # The tiny models' identities are their build version, so their jobs always compare; shapes-sd15's
    # are its files, which a retrained adapter changes.
    assert compared >= sum(1 for r in BEFORE["jobs"] if r["model"].startswith("tiny-")) >= 15


def test_a_version_1_record_loads_with_the_defaults_of_what_it_lacks():
    record = _spec().to_record()
    for newer in ("spec_version", "strategy", "tileable", "conditioning", "tags", "manifest_path", "manifest_line",
                  "parent_render_id"):
        record.pop(newer)
    record["engine"], record["timings"] = {"attention": "linear"}, {"render_s": 1.0}  # what ingest adds
    spec = JobSpec.from_record(record)
    assert (spec.strategy, spec.tileable, spec.conditioning, spec.tags) == ("auto", False, {}, ())
    assert spec.key == _spec().key
    assert JobSpec.from_record(spec.to_record()) == spec and spec.to_record()["spec_version"] == SPEC_VERSION


def test_a_record_missing_what_decides_the_pixels_names_the_fields():
    record = _spec().to_record()
    del record["prompt"], record["seed"]
    with pytest.raises(ValueError, match=r"job record lacks \['prompt', 'seed'\]"):
        JobSpec.from_record(record)


def test_a_first_render_and_its_re_render_differ_only_by_the_parent():
    first = _spec()
    assert "parent_render_id" not in first.key_fields()
    again = first.derived("01JPARENT", width=128, height=128)
    assert again.key_fields()["parent_render_id"] == "01JPARENT" and again.key != first.key


@pytest.mark.parametrize("width, height, message", [(100, 64, "width must be a multiple of 8, got 100"),
                                                    (64, 16392, "height must be at most 16384, got 16392"),
                                                    (0, 64, "width must be positive")])
def test_the_size_rule_holds_for_every_job(width, height, message):
    with pytest.raises(ValueError, match=message):
        _spec(width=width, height=height)


# What each pixel field is changed to, so that the engine's request must differ.
_CHANGED = {"prompt": "a quiet street", "negative_prompt": "", "seed": 2, "width": 128, "height": 128, "steps": 3,
            "guidance": 3.0, "scheduler": "ddim", "attention": "softmax", "strategy": "sdedit", "tileable": "x",
            "conditioning": {"lora": [{"name": "tiny-style", "scale": 0.5}]}}


def test_every_field_that_changes_pixels_reaches_the_render_request():
    """Add a pixel field to JobSpec and forget `render_request`, and this fails."""
    assert set(pixel_fields()) == set(_CHANGED), "say in _CHANGED what the new field changes to"
    base = render_request(_spec())
    for name, value in _CHANGED.items():
        assert render_request(_spec(**{name: value})) != base, f"{name} does not reach RenderRequest"


def test_the_ground_floor_stands_only_on_the_engines_capabilities():
    for path in (ROOT / "linstudio_jobs").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("linfusion_engine"):
                assert node.module == "linfusion_engine.capabilities", f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("linfusion_engine") for a in node.names), path.name
