"""The JSON Schema editors use: complete, self-describing, and in agreement with the validator."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from linstudio.cli import app
from manifests import Manifest, load_manifests, manifest_json_schema
from manifests.checks import CheckContext
from manifests.schema import Asset, ControlNet, Defaults, InitImage, IpAdapter, Lora
from manifests.validate import validate_document
from linstudio.settings import get_settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "manifests").glob("examples*/*.yaml"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(json.dumps(manifest_json_schema()))  # what an editor gets: plain JSON
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_survives_json_round_trip():
    schema = manifest_json_schema()
    assert json.loads(json.dumps(schema)) == schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_cli_prints_the_schema():
    result = CliRunner().invoke(app, ["manifest", "schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == manifest_json_schema()


@pytest.mark.parametrize("model", [Manifest, Defaults, Asset, ControlNet, IpAdapter, InitImage, Lora])
def test_every_field_is_described(model):
    undocumented = [name for name, info in model.model_fields.items() if not info.description]
    assert not undocumented
    assert model.__doc__


def test_there_are_examples_for_every_team():
    teams = {yaml.safe_load(p.read_text())["team"] for p in EXAMPLES}
    assert teams == {"game", "vr", "film", "ad"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_examples_validate_against_the_json_schema(validator, path):
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_validated_manifest_round_trips_through_json(validator, path):
    (loaded,) = load_manifests([path], settings=get_settings()).manifests
    data = json.loads(loaded.manifest.model_dump_json(exclude_none=True))
    assert list(validator.iter_errors(data)) == []
    assert Manifest.model_validate(data) == loaded.manifest


BASE = {"version": 1, "team": "film", "project": "p", "defaults": {"model": "sd15", "sizes": ["64x64"]},
        "assets": [{"id": "a", "prompt": "x"}]}


@pytest.mark.parametrize("change", [
    {"defalts": {}},
    {"team": "flim"},
    {"version": 2},
    {"project": "night city"},
    {"assets": []},
    {"assets": [{"id": "a", "prompt": "x", "sizes": ["1024"]}]},
    {"assets": [{"id": "a", "prompt": "x", "seeds": [1], "variants": 2}]},
    {"assets": [{"id": "a", "prompt": "x", "steps": 0}]},
    {"assets": [{"id": "a", "prompt": ""}]},
    {"assets": [{"id": "a", "prompt": "x", "tileable": "z"}]},
    {"assets": [{"id": "a", "prompt": "x", "controlnet": {"type": "canny", "image": "c.png", "scale": 3}}]},
    {"assets": [{"id": "a", "prompt": "x", "scheduler": "eulr"}]},
], ids=lambda c: json.dumps(c)[:50])
def test_schema_and_validator_refuse_the_same_mistakes(validator, tmp_path, change):
    data = {**BASE, **change}
    assert list(validator.iter_errors(data)), "the JSON Schema let it through"
    manifest, issues = validate_document(data, CheckContext(folder=tmp_path))
    assert manifest is None and issues, "linstudio validate let it through"


def test_one_or_many_is_in_the_schema(validator):
    one = {**BASE, "assets": [{"id": "a", "prompt": "x", "controlnet": {"type": "canny", "image": "c.png"},
                               "lora": {"name": "s"}}]}
    many = {**BASE, "assets": [{"id": "a", "prompt": "x", "controlnet": [{"type": "canny", "image": "c.png"}],
                                "lora": [{"name": "s"}]}]}
    assert list(validator.iter_errors(one)) == [] and list(validator.iter_errors(many)) == []
    assert Manifest.model_validate(one) == Manifest.model_validate(many)
