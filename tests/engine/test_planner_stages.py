"""The planner's stage schedules follow the published recipes, scaled to the model's native size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from linfusion_engine.planner import choose_strategy, estimate, plan_job, plan_render


def _stages(plan):
    return [(s.kind, s.width, s.height, s.strength) for s in plan.stages]


def test_sdedit_tiny_chain_doubles_from_the_native_size():
    plan = plan_render("sdedit", 256, 256, "sd15", 64)
    assert _stages(plan) == [("txt2img", 64, 64, None), ("img2img", 128, 128, 0.4), ("img2img", 256, 256, 0.3)]
    assert plan.label() == "64x64 > 128x128@0.4 > 256x256@0.3"


def test_sdedit_16k_matches_the_published_sd15_chain():
    plan = plan_render("sdedit", 16384, 8192, "sd15", 512)
    assert _stages(plan) == [("txt2img", 1024, 512, None), ("img2img", 2048, 1024, 0.4),
                             ("img2img", 4096, 2048, 0.3), ("img2img", 8192, 4096, 0.2),
                             ("img2img", 16384, 8192, 0.1)]


def test_sdedit_takes_the_models_own_strengths_and_repeats_the_last():
    plan = plan_render("sdedit", 1024, 1024, "sd15", 64, sdedit_strengths=(0.25, 0.2))
    assert [s.strength for s in plan.stages] == [None, 0.25, 0.2, 0.2, 0.2]  # 64 -> 1024: four doublings
    assert plan_render("auto", 64, 64, "sd15", 64, sdedit_strengths=(0.25,)).strategy == "direct"


def test_shapes_sd15_plans_its_own_sdedit_strengths():
    """The built-in entry's strengths reach `linstudio plan`'s estimate (docs/quality.md: why)."""
    from linfusion_engine.registry import BUILTIN_ENTRIES

    entry = next(e for e in BUILTIN_ENTRIES if e.name == "shapes-sd15")
    job = plan_job(strategy="auto", width=512, height=512, steps=20, guidance=3, family=entry.family,
                   native=entry.native_size, tiny=True, sdedit_strengths=entry.sdedit_strengths)
    assert job["stages_label"] == "128x128 > 256x256@0.25 > 512x512@0.2"


def test_sdedit_non_power_of_two_target_lands_exactly():
    plan = plan_render("sdedit", 200, 120, "sd15", 64)
    assert (plan.stages[-1].width, plan.stages[-1].height) == (200, 120)
    assert all(s.width % 8 == 0 and s.height % 8 == 0 for s in plan.stages)
    assert plan.stages[0].width * plan.stages[0].height <= 2 * 64 * 64 * 1.3
    assert "power of two" in plan.note


def test_highres_published_strengths_and_dilations():
    plan = plan_render("highres", 16384, 16384, "sdxl", 1024)
    assert [s.strength for s in plan.stages[1:]] == [0.32, 0.24, 0.16, 0.08]  # linspace(0.32, 0, 5)[:4]
    assert [s.dilation for s in plan.stages[1:]] == [2, 4, 8, 16]
    assert (plan.stages[0].width, plan.stages[-1].width) == (1024, 16384)
    assert plan.note.endswith("exact")


def test_highres_non_power_of_two_ends_with_a_refine_stage_and_says_so():
    plan = plan_render("highres", 136, 136, "sdxl", 64)
    assert _stages(plan) == [("txt2img", 32, 32, None), ("highres", 64, 64, 0.32), ("highres", 128, 128, 0.16),
                             ("refine", 136, 136, 0.1)]
    assert "resize-and-refine" in plan.note


def test_auto_renders_directly_up_to_twice_the_native_area():
    assert choose_strategy("auto", 1024, 512, "sd15", 512) == "direct"  # 2x the area: the published base
    assert choose_strategy("auto", 720, 720, "sd15", 512) == "direct"
    assert choose_strategy("auto", 728, 728, "sd15", 512) == "sdedit"  # just over 2x the area
    assert choose_strategy("auto", 1024, 1024, "sd15", 512) == "sdedit"  # 2x the side repeats content
    assert choose_strategy("auto", 2048, 1024, "sd15", 512) == "sdedit"
    assert choose_strategy("auto", 1408, 1408, "sdxl", 1024) == "direct"
    assert choose_strategy("auto", 2048, 2048, "sdxl", 1024) == "highres"
    assert choose_strategy("auto", 4096, 4096, "sdxl", 1024) == "highres"
    with pytest.raises(ValueError, match="SD-XL recipe"):
        choose_strategy("highres", 1024, 1024, "sd15", 512)
    with pytest.raises(ValueError, match="unknown strategy"):
        choose_strategy("tiled", 1024, 1024, "sd15", 512)


def test_estimates_grow_with_size_and_shrink_with_low_memory():
    small = estimate(plan_render("sdedit", 2048, 2048, "sd15", 512), steps=8, family="sd15", tiny=False)
    big = estimate(plan_render("sdedit", 16384, 8192, "sd15", 512), steps=8, family="sd15", tiny=False)
    low = estimate(plan_render("sdedit", 16384, 8192, "sd15", 512), steps=8, family="sd15", tiny=False,
                   low_memory=True)
    assert small.peak_bytes < big.peak_bytes and low.peak_bytes < big.peak_bytes
    assert big.vae_tiled and not small.vae_tiled
    assert small.seconds < big.seconds


def test_plan_job_is_json():
    job = plan_job(strategy="auto", width=256, height=128, steps=4, guidance=7.5, family="sd15", native=64, tiny=True)
    assert json.loads(json.dumps(job))["strategy"] == "sdedit"
    assert job["stages_label"] == "128x64 > 256x128@0.4"


def test_linstudio_plan_shows_stages_and_estimates_without_torch(tmp_path):
    manifest = Path(__file__).resolve().parents[2] / "manifests" / "examples-conditioning" / "game-tileable.yaml"
    code = ("import sys, json; from typer.testing import CliRunner; from linstudio.cli import app; "
            f"r = CliRunner().invoke(app, ['plan', {str(manifest)!r}, '--json']); "
            "print(json.dumps({'out': r.output, 'code': r.exit_code, 'torch': 'torch' in sys.modules}))")
    env = {"LINSTUDIO_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, result["out"]
    assert not result["torch"], "linstudio plan imported torch"
    jobs = {j["asset_id"]: j for m in json.loads(result["out"])["manifests"] for j in m["jobs"]}
    panorama = jobs["cavern-panorama"]["plan"]
    assert panorama["strategy"] == "sdedit"
    assert [(s["width"], s["height"], s["strength"]) for s in panorama["stages"]] == [(128, 64, None), (256, 128, 0.4)]
    assert panorama["estimate"]["peak_bytes"] > 0 and panorama["estimate"]["seconds"] >= 0


def test_estimate_peak_gib_routes_16k_to_large_gpus(tmp_path, monkeypatch):
    from linfusion_engine.planner import estimate_peak_gib
    from linfusion_engine.registry import ModelRegistry

    registry = ModelRegistry(tmp_path / "models.yaml", tmp_path / "models")
    job = {"model": "sd15", "strategy": "auto", "steps": 8, "guidance": 7.5}
    small = estimate_peak_gib({**job, "width": 1024, "height": 1024}, registry)
    big = estimate_peak_gib({**job, "width": 16384, "height": 8192}, registry)
    assert small < 40 < big
    assert estimate_peak_gib({**job, "model": "tiny-sd15", "width": 64, "height": 64}, registry) < 1
