"""The manifest schema and the engine's request checks read one declaration: linfusion_engine.capabilities.

What a manifest may ask for is exactly what the engine declares it supports, so there is no
"not supported yet" refusal left to test: these tests hold the copies to the declaration instead.
"""

from __future__ import annotations

import dataclasses

import pytest

from linfusion_engine import capabilities
from linfusion_engine.planner import STRATEGIES as PLANNER_STRATEGIES
from linfusion_engine.registry import ModelEntry
from linfusion_engine.requests import RenderRequest
from manifests.schema import CONDITIONING_INPUTS, AssetFields, manifest_json_schema, parse_size


def _property(name: str) -> dict:
    return manifest_json_schema()["$defs"]["Defaults"]["properties"][name]


def _enum(schema: dict) -> list:
    return next(option["enum"] for option in schema["anyOf"] if "enum" in option)


def test_the_schema_offers_exactly_the_declared_modes_strategies_and_control_types():
    assert _enum(_property("attention")) == list(capabilities.ATTENTION_MODES)
    assert _enum(_property("strategy")) == list(capabilities.STRATEGIES)
    control = manifest_json_schema()["$defs"]["ControlNet"]["properties"]["type"]
    assert control["enum"] == list(capabilities.CONTROLNET_TYPES)
    assert _property("tileable")["anyOf"][0]["enum"] == [False, True, *capabilities.TILE_AXES]
    assert PLANNER_STRATEGIES is capabilities.STRATEGIES


def test_every_declared_conditioning_type_has_its_manifest_field_and_registry_part():
    entry_fields = {f.name for f in dataclasses.fields(ModelEntry)}
    for kind in capabilities.CONDITIONING:
        assert kind.manifest_field in AssetFields.model_fields
        assert kind.manifest_field in CONDITIONING_INPUTS
        assert kind.registry_part is None or kind.registry_part in entry_fields, kind
        assert kind.description and "\n" not in kind.description
    assert set(CONDITIONING_INPUTS) == {c.manifest_field for c in capabilities.CONDITIONING}
    assert capabilities.CONDITIONING_TYPES == ("controlnet", "ip_adapter", "init_image", "lora")


def test_schema_descriptions_come_from_the_declaration():
    assert all(s.name in _property("strategy")["description"] for s in capabilities.STRATEGY_TABLE)
    ip = capabilities.CONDITIONING[capabilities.CONDITIONING_TYPES.index("ip_adapter")]
    assert _property("ip_adapter")["description"].lower().startswith(ip.description.lower())


@pytest.mark.parametrize("width, height", [(8, 8), (64, 63), (0, 64), (16384, 8), (16392, 8), (1000, 1004)])
def test_manifest_sizes_and_engine_requests_keep_the_one_size_rule(width, height):
    problem = capabilities.size_problem(width, height)
    request = RenderRequest("x", width=width, height=height)
    if problem is None:
        assert parse_size(f"{width}x{height}") == (width, height)
        request.check_inputs()
        return
    with pytest.raises(ValueError) as manifest:
        parse_size(f"{width}x{height}")
    assert str(manifest.value) == f"{width}x{height}: {problem}"
    with pytest.raises(ValueError, match=problem):
        request.check_inputs()


def test_features_used_names_conditioning_tiling_and_multi_stage_strategies():
    assert capabilities.features_used({"lora": [], "controlnet": []}, False, "auto") == ["controlnet", "lora"]
    assert capabilities.features_used({}, "x", "sdedit") == ["tileable", "strategy:sdedit"]
    assert capabilities.features_used({}, False, "direct") == []
