"""`linstudio validate`, `linstudio plan`: output, exit status, JSON, speed, and no torch on the way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from linstudio.cli import app
from manifests import expand_jobs, load_manifests
from manifests.schema import AssetFields, ControlNet, InitImage, IpAdapter, Lora, Manifest
from linstudio.settings import get_settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"
GOOD = "version: 1\nteam: ad\nproject: p\ndefaults: {model: tiny-sd15, sizes: [64x64]}\nassets:\n  - {id: a, prompt: x}\n"
BAD = ("version: 1\nteam: ad\nproject: p\ndefaults:\n  model: tiny-sd15\n  sizes: [64x63]\nassets:\n"
       "  - id: a\n    prompt: x\n    promt: y\n")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "film").mkdir()
    (tmp_path / "film" / "good.yaml").write_text(GOOD)
    (tmp_path / "film" / "night-city.yaml").write_text(BAD)
    return tmp_path


def test_validate_examples_passes():
    result = invoke("validate", str(EXAMPLES))
    assert result.exit_code == 0, result.output
    assert result.stdout == "5 manifests, all valid\n"
    assert result.stderr == ""


def test_validate_prints_every_error_then_a_summary_and_fails(folder):
    result = invoke("validate", "film", "missing.yaml")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "missing.yaml: no such file or folder",
        "film/night-city.yaml:6 defaults.sizes[0]: 64x63: height must be a multiple of 8, got 63",
        "film/night-city.yaml:10 assets[0].promt: unknown key; did you mean 'prompt'?",
        "2 manifests, 1 invalid, 3 errors",
    ]


def test_validate_json(folder):
    result = invoke("validate", "--json", "film")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert report["summary"] == {"manifests": 2, "invalid": 1, "errors": 2}
    by_path = {m["path"]: m for m in report["manifests"]}
    assert by_path["film/good.yaml"] == {"path": "film/good.yaml", "valid": True, "errors": []}
    assert by_path["film/night-city.yaml"]["errors"][0] == {
        "path": "film/night-city.yaml", "line": 6, "key_path": "defaults.sizes[0]",
        "message": "64x63: height must be a multiple of 8, got 63",
        "text": "film/night-city.yaml:6 defaults.sizes[0]: 64x63: height must be a multiple of 8, got 63"}


def test_validate_needs_a_path():
    assert invoke("validate").exit_code == 2


def test_plan_lists_jobs_with_short_keys_and_totals():
    result = invoke("plan", str(EXAMPLES / "film.yaml"), str(EXAMPLES / "ad.yaml"))
    assert result.exit_code == 0, result.output
    loaded_examples = load_manifests([EXAMPLES / "film.yaml", EXAMPLES / "ad.yaml"], settings=get_settings())
    jobs = [job for loaded in loaded_examples.manifests for job in expand_jobs(loaded)]
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["KEY", "ASSET", "SIZE", "SEED", "MODEL", "STRATEGY", "STAGES", "EST-PEAK", "EST-TIME",
                                "FEATURES"]  # issue 5: stages and estimates
    for job in jobs:
        assert any(line.split()[:4] == [job.key[:12], job.asset_id, f"{job.width}x{job.height}", str(job.seed)]
                   for line in lines)
    assert lines[-1] == "7 jobs from 2 manifests, 0.061 megapixels in total"


def test_plan_json_has_full_keys_and_features():
    result = invoke("plan", "--json", str(REPO / "manifests" / "examples-conditioning" / "film-conditioning.yaml"))
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    (manifest,) = plan["manifests"]
    assert [len(j["key"]) for j in manifest["jobs"]] == [64, 64]
    assert [j["features"] for j in manifest["jobs"]] == [["controlnet", "ip_adapter"], ["init_image"]]
    assert plan["totals"] == {"manifests": 1, "jobs": 2, "megapixels": 0.008, "jobs_with_features": 2}


def test_plan_refuses_invalid_manifests(folder):
    result = invoke("plan", "film")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == "2 manifests, 1 invalid, 2 errors"


def test_validate_imports_neither_torch_nor_diffusers():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from linstudio.cli import app\n"
        f"result = CliRunner().invoke(app, ['validate', {str(EXAMPLES)!r}, {str(EXAMPLES) + '-conditioning'!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'prefect') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_validate_answers_quickly():
    """About a second on a workstation; the bound is loose because CI machines are shared."""
    linstudio = Path(sys.executable).with_name("linstudio")
    command = [str(linstudio)] if linstudio.exists() else [sys.executable, "-m", "linstudio.cli"]
    started = time.perf_counter()
    out = subprocess.run(command + ["validate", str(EXAMPLES)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    elapsed = time.perf_counter() - started
    assert out.returncode == 0, out.stderr
    assert elapsed < 5, f"validate took {elapsed:.1f} s"


def test_readme_documents_every_field():
    readme = (REPO / "manifests" / "README.md").read_text()
    names = set()
    for model in (Manifest, AssetFields, ControlNet, IpAdapter, InitImage, Lora):
        names |= set(model.model_fields)
    names |= {"id", "prompt"}
    missing = sorted(name for name in names if f"`{name}`" not in readme)
    assert not missing, f"fields missing from manifests/README.md: {missing}"
