"""The model-file checks `linstudio models add` calls, as typed results and typed refusals.

tests/test_cli_models.py holds the command's messages; these hold what the engine hands it.
Files are written with numpy (a safetensors header is all the checks read).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from linfusion_engine.checkpoints import CheckpointError
from linfusion_engine.file_checks import (
    BaseModelCheck,
    FamilyMismatchError,
    check_base,
    check_controlnet,
    check_ip_adapter,
    check_lora,
    ip_adapter_files,
)

UNET = "model.diffusion_model."


def _sd15_file(path: Path, *, vae: bool = True) -> Path:
    tensors = {
        f"{UNET}input_blocks.0.0.weight": np.zeros((320, 4, 3, 3), np.float16),
        f"{UNET}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": np.zeros((320, 768), np.float16),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": np.zeros(4, np.float16),
    }
    if vae:
        tensors["first_stage_model.decoder.conv_out.weight"] = np.zeros((3, 128, 3, 3), np.float16)
    save_file(tensors, str(path))
    return path


def _folder(path: Path, pipeline: str, width: int) -> Path:
    (path / "unet").mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    (path / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": width, "in_channels": 4}))
    return path


def test_a_single_file_gives_its_family_and_settings(tmp_path):
    checked = check_base(_sd15_file(tmp_path / "look.safetensors", vae=False))
    assert checked == BaseModelCheck(path=tmp_path / "look.safetensors", family="sd15",
                                     evidence="UNet cross-attention 768 wide (CLIP ViT-L): SD-1.x",
                                     prediction_type="epsilon", native_size=512, has_vae=False)


def test_a_folder_gives_its_family_only(tmp_path):
    checked = check_base(_folder(tmp_path / "xl", "StableDiffusionXLPipeline", 2048), "sdxl")
    assert (checked.family, checked.family_given, checked.prediction_type, checked.has_vae) == ("sdxl", False, None, None)


def test_a_folder_of_no_known_family_takes_the_given_one_or_is_refused(tmp_path):
    folder = _folder(tmp_path / "tiny", "StableDiffusionXLPipeline", 64)
    checked = check_base(folder, "sdxl")
    assert checked.family_given and checked.family == "sdxl"
    with pytest.raises(CheckpointError, match="unknown architecture"):
        check_base(folder)


def test_a_family_the_file_contradicts_is_a_typed_refusal(tmp_path):
    path = _sd15_file(tmp_path / "look.safetensors")
    with pytest.raises(FamilyMismatchError) as caught:
        check_base(path, "sdxl")
    assert (caught.value.given, caught.value.detected, caught.value.path) == ("sdxl", "sd15", path)


def test_parts_are_refused_when_they_are_something_else(tmp_path):
    base = _sd15_file(tmp_path / "look.safetensors")
    with pytest.raises(CheckpointError, match="not a LoRA"):
        check_lora(base)
    with pytest.raises(CheckpointError, match="not a ControlNet"):
        check_controlnet(base)
    with pytest.raises(CheckpointError, match="no ip-adapter"):
        check_ip_adapter(tmp_path)


def test_an_ip_adapter_folder_prefers_safetensors_in_models(tmp_path):
    (tmp_path / "models").mkdir()
    for name in ("ip-adapter_sd15.bin", "ip-adapter_sd15.safetensors"):
        (tmp_path / "models" / name).write_bytes(b"")
    assert ip_adapter_files(tmp_path) == ("models", "ip-adapter_sd15.safetensors")
