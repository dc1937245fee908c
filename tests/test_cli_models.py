"""`linstudio models ls` / `show` / `add` through typer's CliRunner, each test in its own home.

`models add` reads a checkpoint's keys and shapes only, so these tests use stub checkpoints: real
key names and the shapes detection reads, no full-size tensors. Full-size random checkpoints
(and renders from them) are in tests/engine/test_fullsize_models.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from linstudio.cli import app

UNET = "model.diffusion_model."


def stub_checkpoint(path: Path, family: str, *, vae: bool = True, extra: dict | None = None, fmt: str = "safetensors",
                    in_channels: int = 4) -> Path:
    """A file with the keys and shapes that tell a family (tiny tensors elsewhere)."""
    width = {"sd15": 768, "sd21": 1024, "sdxl": 2048}[family]
    block = "input_blocks.4.1" if family == "sdxl" else "input_blocks.1.1"
    tensors = {
        f"{UNET}input_blocks.0.0.weight": torch.zeros(320, in_channels, 3, 3, dtype=torch.float16),
        f"{UNET}{block}.transformer_blocks.0.attn2.to_k.weight": torch.zeros(640 if family == "sdxl" else 320, width,
                                                                           dtype=torch.float16),
    }
    text = {"sd15": ["cond_stage_model.transformer.text_model.final_layer_norm.weight"],
            "sd21": ["cond_stage_model.model.ln_final.weight"],
            "sdxl": ["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
                     "conditioner.embedders.1.model.positional_embedding"]}[family]
    tensors.update({key: torch.zeros(4, dtype=torch.float16) for key in text})
    if vae:
        tensors["first_stage_model.decoder.conv_out.weight"] = torch.zeros(3, 128, 3, 3, dtype=torch.float16)
    tensors.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "ckpt":
        torch.save({"state_dict": tensors}, path)
    else:
        save_file(tensors, str(path))
    return path


@pytest.fixture
def run(isolated_home):
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, ["models", *args])

    return invoke


def _table(result) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}


def test_ls_shows_builtins_and_what_is_local(run):
    result = run("ls")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert lines["NAME"].split() == ["NAME", "FAMILY", "NATIVE", "FORMAT", "SIZE", "LINFUSION", "LOCAL"]
    assert lines["tiny-sd15"].split()[1:4] == ["sd15", "64", "builtin"] and lines["tiny-sd15"].endswith("yes")
    assert lines["sd15"].split()[3] == "hub" and lines["sd15"].split()[5] == "trained"
    assert "missing: base, linfusion" in lines["sdxl"]
    # the trained built-in ships with the code: local, its LinFusion layers distilled
    assert lines["shapes-sd15"].split()[1:4] == ["sd15", "128", "builtin"] and lines["shapes-sd15"].endswith("yes")
    assert lines["shapes-sd15"].split()[5] == "trained"


def test_ls_json(run):
    result = run("ls", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["tiny-sdxl"]["available"] is True and rows["tiny-sdxl"]["missing"] == []
    assert rows["sd15"]["available"] is False and rows["sd15"]["format"] == "hub"
    assert any("huggingface-cli download runwayml/stable-diffusion-v1-5" in p for p in rows["sd15"]["missing"])
    assert rows["sd21"]["native_size"] == 768 and rows["sd21"]["builtin"] is True
    assert rows["tiny-sd15"]["linfusion_state"] == "untrained (from_unet)"
    assert rows["shapes-sd15"]["linfusion_state"] == "trained (builtin)" and rows["shapes-sd15"]["available"] is True
    # Its trained conditioning, listed the way the tiny models list theirs (issue 27).
    assert rows["shapes-sd15"]["controlnets"] == {"seg": "package:shapes-sd15-controlnet-seg"}
    assert rows["shapes-sd15"]["ip_adapter"] == "package:shapes-sd15-ip-adapter"


@pytest.mark.parametrize(("family", "native", "prediction"), [
    ("sd15", 512, "epsilon"), ("sd21", 768, "v_prediction"), ("sdxl", 1024, "epsilon")])
def test_add_single_file_detects_the_family_and_says_how(run, isolated_home, tmp_path, family, native, prediction):
    ckpt = stub_checkpoint(tmp_path / f"studio-{family}.safetensors", family)
    result = run("add", "studio", "--base", str(ckpt))
    assert result.exit_code == 0, result.output
    assert f"registered 'studio' ({family}, single file)" in result.stdout
    assert f"family {family}: " in result.stdout
    assert "untrained start" in result.stdout and "linstudio distill" in result.stdout  # from_unet is the default
    if family == "sd21":
        assert "v-prediction at 768 px assumed" in result.stdout
    saved = yaml.safe_load((isolated_home / "models.yaml").read_text())["models"]["studio"]
    assert saved == {"family": family, "base": str(ckpt), "linfusion": "from_unet", "native_size": native,
                     "description": "", "prediction_type": prediction}

    rows = {row["name"]: row for row in json.loads(run("ls", "--json").stdout)}
    assert rows["studio"]["format"] == "single file" and rows["studio"]["size_bytes"] == ckpt.stat().st_size
    ls = run("ls")
    row = _table(ls)["studio"]
    assert row[3] == "single-file" and row[5] == "untrained"
    assert row[4] == ("2.5MiB" if family == "sdxl" else f"{ckpt.stat().st_size / 1024:.1f}KiB")
    assert "train them with `linstudio distill`" in ls.stdout


def test_add_reads_a_pickled_ckpt_with_weights_only(run, isolated_home, tmp_path):
    ckpt = stub_checkpoint(tmp_path / "old.ckpt", "sd15", fmt="ckpt")
    result = run("add", "old", "--base", str(ckpt))
    assert result.exit_code == 0, result.output
    assert "(sd15, single file)" in result.stdout


def test_a_v_pred_key_means_v_prediction_and_options_override(run, isolated_home, tmp_path):
    vpred = stub_checkpoint(tmp_path / "vpred.safetensors", "sd15", extra={"v_pred": torch.zeros(0)})
    assert run("add", "vp", "--base", str(vpred)).exit_code == 0
    base21 = stub_checkpoint(tmp_path / "base21.safetensors", "sd21")
    result = run("add", "b21", "--base", str(base21), "--prediction-type", "epsilon", "--native-size", "512")
    assert result.exit_code == 0, result.output
    models = yaml.safe_load((isolated_home / "models.yaml").read_text())["models"]
    assert models["vp"]["prediction_type"] == "v_prediction"
    assert (models["b21"]["prediction_type"], models["b21"]["native_size"]) == ("epsilon", 512)


def test_show_gives_the_details(run, tmp_path):
    ckpt = stub_checkpoint(tmp_path / "look.safetensors", "sd15")
    vae = stub_checkpoint(tmp_path / "vae.safetensors", "sd15")  # a whole checkpoint's first_stage_model is a VAE
    assert run("add", "look", "--base", str(ckpt), "--vae", str(vae), "--description", "our look").exit_code == 0
    result = run("show", "look")
    assert result.exit_code == 0, result.output
    text = result.stdout
    for expected in ("our look", "sd15", "512 px", "epsilon", f"{ckpt} (single file)", f"vae          {vae}",
                     "untrained (from_unet)", "linstudio distill"):
        assert expected in text, (expected, text)
    shown = json.loads(run("show", "look", "--json").stdout)
    assert shown["vae"] == str(vae) and len(shown["identity"]) == 16
    assert run("show", "nope").exit_code == 2


def test_a_single_files_identity_is_its_contents(run, isolated_home, tmp_path):
    """Renaming the entry or moving the file re-renders nothing; changing a byte does."""
    from linfusion_engine.registry import ModelRegistry

    ckpt = stub_checkpoint(tmp_path / "a" / "look.safetensors", "sd15")
    assert run("add", "look", "--base", str(ckpt)).exit_code == 0
    moved = tmp_path / "b" / "renamed.safetensors"
    moved.parent.mkdir()
    moved.write_bytes(ckpt.read_bytes())
    assert run("add", "look-v2", "--base", str(moved)).exit_code == 0
    registry = ModelRegistry(isolated_home / "models.yaml", isolated_home / "models")
    assert registry.identity(registry.get("look")) == registry.identity(registry.get("look-v2"))
    stub_checkpoint(moved, "sd15", extra={"v_pred": torch.zeros(0)})  # different contents, same path
    registry = ModelRegistry(isolated_home / "models.yaml", isolated_home / "models")
    assert registry.identity(registry.get("look")) != registry.identity(registry.get("look-v2"))


def test_add_diffusers_folder_reads_its_family(run, isolated_home, tmp_path):
    from linfusion_devkit.tiny import ensure_tiny_model

    folder = ensure_tiny_model("tiny-sdxl", tmp_path / "tiny-xl")
    # A tiny model's 64-wide cross-attention tells no real family: --family decides, and says so.
    result = run("add", "mine", "--base", str(folder), "--linfusion", "none", "--family", "sdxl", "--native-size", "640")
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and "family sdxl from --family" in result.stdout
    row = _table(run("ls"))["mine"]
    assert row[1:4] == ["sdxl", "640", "folder"] and row[-1] == "yes"
    result = run("add", "mine2", "--base", str(folder))
    assert result.exit_code == 2 and "unknown architecture" in result.stderr


def test_add_a_hub_id_not_in_the_cache_needs_family_and_warns(run, isolated_home):
    result = run("add", "later", "--base", "studio/house-style", "--family", "sdxl")
    assert result.exit_code == 0, result.output
    assert "warning: later: not available locally yet" in result.stderr
    result = run("add", "later2", "--base", "studio/house-style")
    assert result.exit_code == 2 and "give --family" in result.stderr


class PickledHook:
    """Pickled by reference into a .ckpt: torch.load(weights_only=True) must refuse to rebuild it."""


def _bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the one-line refusal must say)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes.safetensors"
    text.write_text("this is a text file, not weights\n")
    real = stub_checkpoint(folder / "whole.safetensors", "sd15")
    truncated = folder / "cut.safetensors"
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    lora = folder / "ink.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)}, str(lora))
    vae = folder / "vae-ft-mse.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(128, 3, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 128, 3, 3)},
              str(vae))
    flux = folder / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(128)}, str(flux))
    inpaint = stub_checkpoint(folder / "inpaint.safetensors", "sd15", in_channels=9)
    no_vae = stub_checkpoint(folder / "novae.safetensors", "sd15", vae=False)
    pickled = folder / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "hook": PickledHook()}, pickled)
    return {
        "missing": (folder / "absent.safetensors", "no such file or folder"),
        "text": (text, "not a valid safetensors file"),
        "truncated": (truncated, "cut short"),
        "lora": (lora, "this is a LoRA file"),
        "vae": (vae, "this is a VAE"),
        "unknown": (flux, "unknown architecture"),
        "inpainting": (inpaint, "inpainting checkpoint"),
        "no-vae": (no_vae, "has no VAE"),
        "pickle": (pickled, "weights_only=True"),
    }


@pytest.mark.parametrize("case", ["missing", "text", "truncated", "lora", "vae", "unknown", "inpainting", "no-vae",
                                  "pickle"])
def test_bad_checkpoints_are_refused_in_one_line_naming_the_file(run, isolated_home, tmp_path, case):
    path, message = _bad_files(tmp_path / "files")[case]
    result = run("add", "bad", "--base", str(path))
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and str(path) in err and message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in result.output
    assert not (isolated_home / "models.yaml").exists()  # nothing written


def test_wrong_parts_are_refused_and_nothing_is_written(run, isolated_home, tmp_path):
    files = _bad_files(tmp_path / "files")
    base = stub_checkpoint(tmp_path / "base.safetensors", "sd15")
    cases = [
        (["--vae", str(files["lora"][0])], "--vae: ", "not a VAE"),
        (["--lora", f"ink={files['vae'][0]}"], "--lora ink: ", "not a LoRA"),
        (["--controlnet", f"canny={files['vae'][0]}"], "--controlnet canny: ", "not a ControlNet"),
        (["--ip-adapter", str(files["lora"][0])], "--ip-adapter: ", "not an IP-Adapter"),
        (["--family", "sdxl"], "--family sdxl: ", "is sd15"),
        (["--prediction-type", "x0"], "--prediction-type 'x0'", "must be one of"),
        (["--controlnet", "canny"], "--controlnet 'canny'", "expected NAME=PATH"),
    ]
    for args, prefix, message in cases:
        result = run("add", "x", "--base", str(base), *args)
        assert result.exit_code == 2, (args, result.output)
        err = result.stderr.strip()
        assert err.startswith(f"error: {prefix}") and message in err and len(err.splitlines()) == 1, (args, err)
    assert not (isolated_home / "models.yaml").exists()


def test_conditioning_files_are_registered(run, isolated_home, tmp_path):
    base = stub_checkpoint(tmp_path / "base.safetensors", "sd15")
    control = tmp_path / "control_canny.safetensors"
    save_file({"control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3)}, str(control))
    ip = tmp_path / "ipa" / "ip-adapter_sd15.safetensors"
    ip.parent.mkdir()
    save_file({"image_proj.proj.weight": torch.zeros(4, 4), "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 4)}, str(ip))
    result = run("add", "x", "--base", str(base), "--controlnet", f"canny={control}", "--ip-adapter", str(ip))
    assert result.exit_code == 2 and "needs its image encoder beside it" in result.stderr
    (ip.parent / "image_encoder").mkdir()
    result = run("add", "x", "--base", str(base), "--controlnet", f"canny={control}", "--ip-adapter", str(ip))
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((isolated_home / "models.yaml").read_text())["models"]["x"]
    assert saved["controlnets"] == {"canny": str(control)} and saved["ip_adapter"] == str(ip)


@pytest.mark.parametrize(("args", "message"), [
    (["--family", "sd3"], "error: --family 'sd3': must be one of sd15, sd21, sdxl"),
    (["--family", "sd15", "--native-size", "500"], "error: --native-size 500: must be a positive multiple of 8"),
    (["--family", "sd15", "--lora", "ink"], "error: --lora 'ink': expected NAME=PATH"),
])
def test_add_errors_are_one_line_with_exit_code_2(run, isolated_home, args, message):
    result = run("add", "x", "--base", "studio/not-cached", "--linfusion", "none", *args)
    assert result.exit_code == 2
    assert result.stderr.strip() == message or result.stderr.strip().startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (isolated_home / "models.yaml").exists()


def test_add_refuses_a_bad_name_and_a_bad_location(run, tmp_path):
    base = stub_checkpoint(tmp_path / "b.safetensors", "sd15")
    result = run("add", "bad name", "--base", str(base), "--linfusion", "none")
    assert result.exit_code == 2 and "letters, digits" in result.stderr
    result = run("add", "ok", "--base", "not a location", "--linfusion", "none", "--family", "sd15")
    assert result.exit_code == 2 and "--base 'not a location': expected a file or folder path" in result.stderr


def test_broken_registry_file_is_one_line(run, isolated_home):
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "models.yaml").write_text("models: [unclosed")
    result = run("ls")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "models.yaml: not valid YAML" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_models_commands_do_not_import_torch(tmp_path):
    stub = stub_checkpoint(tmp_path / "s.safetensors", "sd15")
    code = ("import sys; from typer.testing import CliRunner; from linstudio.commands.models import models_app; "
            "r = CliRunner(); result = r.invoke(models_app, ['ls', '--json']); assert result.exit_code == 0, result.output; "
            f"result = r.invoke(models_app, ['add', 's', '--base', {str(stub)!r}]); assert result.exit_code == 0, result.output; "
            "result = r.invoke(models_app, ['show', 's']); assert result.exit_code == 0, result.output; "
            "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; assert not bad, bad")
    env = {**os.environ, "LINSTUDIO_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
