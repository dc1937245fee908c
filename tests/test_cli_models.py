"""`linstudio models ls` / `models add` through typer's CliRunner, each test in its own home."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from linstudio.cli import app


@pytest.fixture
def run(isolated_home):
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, ["models", *args])

    return invoke


def test_ls_shows_builtins_and_what_is_local(run):
    result = run("ls")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert lines["NAME"].split() == ["NAME", "FAMILY", "NATIVE", "BASE", "LINFUSION", "LOCAL"]
    assert lines["tiny-sd15"].split()[1:3] == ["sd15", "64"] and lines["tiny-sd15"].endswith("yes")
    assert "missing: base, linfusion" in lines["sdxl"]


def test_ls_json(run):
    result = run("ls", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["tiny-sdxl"]["available"] is True and rows["tiny-sdxl"]["missing"] == []
    assert rows["sd15"]["available"] is False
    assert any("huggingface-cli download runwayml/stable-diffusion-v1-5" in p for p in rows["sd15"]["missing"])
    assert rows["sd21"]["native_size"] == 768 and rows["sd21"]["builtin"] is True


def test_add_registers_and_warns_about_missing_files(run, isolated_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("add", "studio-xl", "--base", "./checkpoints/studio-xl", "--linfusion", "from_unet",
                 "--family", "sdxl", "--description", "our look", "--lora", "ink=loras/ink.safetensors")
    assert result.exit_code == 0, result.output
    assert "registered 'studio-xl'" in result.stdout
    assert "warning: studio-xl: not available locally yet" in result.stderr
    saved = yaml.safe_load((isolated_home / "models.yaml").read_text())["models"]["studio-xl"]
    assert saved["base"] == str(tmp_path / "checkpoints" / "studio-xl")  # relative paths stored absolute
    assert saved["native_size"] == 1024  # the family's default
    assert saved["loras"] == {"ink": str(tmp_path / "loras" / "ink.safetensors")}

    rows = {row["name"]: row for row in json.loads(run("ls", "--json").stdout)}
    assert rows["studio-xl"]["family"] == "sdxl" and rows["studio-xl"]["available"] is False


def test_add_with_local_files_does_not_warn(run, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    result = run("add", "local-ft", "--base", str(base), "--linfusion", "none", "--family", "sd15",
                 "--native-size", "640")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    line = next(line for line in run("ls").stdout.splitlines() if line.startswith("local-ft "))
    assert line.split()[2] == "640" and line.endswith("yes")


@pytest.mark.parametrize(("args", "message"), [
    (["--family", "sd3"], "error: --family 'sd3': must be one of sd15, sd21, sdxl"),
    (["--family", "sd15", "--native-size", "500"], "error: --native-size 500: must be a positive multiple of 8"),
    (["--family", "sd15", "--lora", "ink"], "error: --lora 'ink': expected NAME=PATH"),
])
def test_add_errors_are_one_line_with_exit_code_2(run, isolated_home, args, message):
    result = run("add", "x", "--base", "/models/x", "--linfusion", "none", *args)
    assert result.exit_code == 2
    assert result.stderr.strip() == message or result.stderr.strip().startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (isolated_home / "models.yaml").exists()


def test_add_refuses_a_bad_name_and_a_bad_location(run):
    result = run("add", "bad name", "--base", "/m", "--linfusion", "none", "--family", "sd15")
    assert result.exit_code == 2 and "letters, digits" in result.stderr
    result = run("add", "ok", "--base", "not a location", "--linfusion", "none", "--family", "sd15")
    assert result.exit_code == 2 and "--base 'not a location': expected a folder path" in result.stderr


def test_broken_registry_file_is_one_line(run, isolated_home):
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "models.yaml").write_text("models: [unclosed")
    result = run("ls")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "models.yaml: not valid YAML" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_models_commands_do_not_import_torch(tmp_path):
    code = ("import sys; from typer.testing import CliRunner; from linstudio.commands.models import models_app; "
            "result = CliRunner().invoke(models_app, ['ls', '--json']); assert result.exit_code == 0, result.output; "
            "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; assert not bad, bad")
    env = {**os.environ, "LINSTUDIO_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
