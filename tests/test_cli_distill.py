"""`linstudio distill` and `linstudio distill-eval` on the tiny SD-1.5 model (a few steps, 64 px)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from linstudio.cli import app

runner = CliRunner()


def _data(folder, count=4):
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(np.full((64, 64, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"grey square number {i}")
    return folder


def _distill(*args):
    return runner.invoke(app, ["distill", "--base", "tiny-sd15", "--resolution", "64", "--cpu", "--no-progress",
                               *args])


def test_distill_writes_published_weights_metrics_and_says_how_to_use_them(isolated_home, tmp_path):
    data, out = _data(tmp_path / "data"), tmp_path / "lf"
    result = _distill("--data", str(data), "--out", str(out), "--steps", "3", "--init", "random",
                      "--checkpoint-every", "2")
    assert result.exit_code == 0, result.output
    assert f"in {out} (step 3)" in result.output
    assert "linstudio models add NAME" in result.output and "linstudio distill-eval" in result.output
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "lf-checkpoints").iterdir()) == ["step-00000002", "step-00000003"]

    again = _distill("--data", str(data), "--out", str(out), "--steps", "3")
    assert again.exit_code == 2 and "pass --resume" in again.output

    extended = _distill("--data", str(data), "--out", str(out), "--steps", "4", "--init", "random",
                        "--checkpoint-every", "2", "--resume")
    assert extended.exit_code == 0, extended.output
    assert "resumed from step 3" in extended.output
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4


def test_distill_errors_are_one_line_and_name_the_problem(isolated_home, tmp_path):
    data = _data(tmp_path / "data")
    (data / "stray.png").write_bytes((data / "0.png").read_bytes())
    result = _distill("--data", str(data), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "stray.png" in result.output and "no caption sidecar" in result.output
    result = _distill("--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"), "--init", "zeros")
    assert result.exit_code == 2 and "init 'zeros'" in result.output
    result = runner.invoke(app, ["distill", "--base", "no-such-model", "--data", str(data), "--out",
                                 str(tmp_path / "o"), "--cpu"])
    assert result.exit_code == 2 and "unknown model 'no-such-model'" in result.output


def test_distill_eval_reports_layers_and_images_and_gates(isolated_home, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n\n")
    report = tmp_path / "report.json"
    base = ["distill-eval", "--base", "tiny-sd15", "--linfusion", "from_unet", "--size", "64", "--steps", "2",
            "--device", "cpu", "--prompts", str(prompts), "--prompt", "a blue ball"]
    result = runner.invoke(app, [*base, "--images", str(tmp_path / "images"), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1" in result.output
    assert "mean attention error" in result.output
    data = json.loads(report.read_text())
    assert [p["prompt"] for p in data["prompts"]] == ["a blue ball", "a red cube"]  # --prompt, then the file
    assert len(data["layers"]) == 4 and all(0 < layer["attention_error"] < 1 for layer in data["layers"])
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "student-00.png", "student-01.png", "teacher-00.png", "teacher-01.png"]

    gated = runner.invoke(app, [*base, "--json", "--max-attention-error", "0.0"])
    assert gated.exit_code == 1 and "not good enough: attention error" in gated.output

    none = runner.invoke(app, ["distill-eval", "--base", "tiny-sd15", "--linfusion", "from_unet"])
    assert none.exit_code == 2 and "no prompts" in none.output


@pytest.mark.slow
def test_two_processes_through_accelerate_launch(tmp_path):
    """The multi-GPU path (DDP, loss reduced over processes, per-rank data) with two CPU processes."""
    data, out = _data(tmp_path / "data"), tmp_path / "lf"
    launcher = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "LINSTUDIO_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    # Build the tiny model first: this test is about two training processes, not two first uses.
    from linfusion_engine.registry import ModelRegistry
    from linfusion_devkit.tiny import ensure_tiny_model

    registry = ModelRegistry(tmp_path / "home" / "models.yaml", tmp_path / "home" / "models")
    ensure_tiny_model("tiny-sd15", registry.base_path(registry.get("tiny-sd15")))
    command = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "linstudio.cli", "distill",
               "--base", "tiny-sd15", "--data", str(data), "--out", str(out), "--steps", "3", "--resolution", "64",
               "--cpu", "--no-progress", "--init", "random"]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=500)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.count("LinFusion weights for tiny-sd15") == 1  # reported by the main process only
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert json.loads((out / "distill.json").read_text())["final"]["step"] == 3
    state = json.loads(next((tmp_path / "lf-checkpoints").glob("step-*/state.json")).read_text())
    assert state["num_processes"] == 2
