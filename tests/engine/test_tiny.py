"""The built-in tiny models: deterministic, atomic, shaped like the real families."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from linfusion_devkit import tiny
from linfusion_devkit.tiny import ensure_tiny_model, tiny_unet_config


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sdxl"])
def test_two_builds_in_different_folders_are_byte_identical(tmp_path, name):
    first = ensure_tiny_model(name, tmp_path / "a" / name / "v1")
    second = ensure_tiny_model(name, tmp_path / "b" / name / "v1")
    a, b = _digests(first), _digests(second)
    assert any(key.endswith(".safetensors") for key in a)
    assert a == b


def test_build_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    ensure_tiny_model("tiny-sd15", tmp_path / "m")
    assert torch.equal(before, torch.random.get_rng_state())


def test_built_model_is_reused_not_rebuilt(tmp_path, monkeypatch):
    folder = ensure_tiny_model("tiny-sd15", tmp_path / "m")

    def no_rebuild(family):
        raise AssertionError("rebuilt a model that was already built")

    monkeypatch.setattr(tiny, "build_tiny_pipeline", no_rebuild)
    assert ensure_tiny_model("tiny-sd15", folder) == folder


def test_losing_a_build_race_keeps_the_winner_and_cleans_up(tmp_path):
    winner = ensure_tiny_model("tiny-sd15", tmp_path / "m")
    before = _digests(winner)
    staging = tmp_path / ".m.building-loser"
    staging.mkdir()
    (staging / "model_index.json").write_text("{}")  # the loser's finished copy

    assert tiny._publish(staging, winner) == winner
    assert not staging.exists()
    assert _digests(winner) == before


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(family):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny, "build_tiny_pipeline", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_tiny_model("tiny-sd15", tmp_path / "m" / "v1")
    assert list((tmp_path / "m").iterdir()) == []


def test_half_written_folder_is_refused_with_advice(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "unet").mkdir()
    with pytest.raises(RuntimeError, match="delete the folder"):
        ensure_tiny_model("tiny-sd15", folder)


def test_unknown_tiny_names_and_families_are_refused(tmp_path):
    with pytest.raises(ValueError, match="tiny-sd15, tiny-sdxl"):
        ensure_tiny_model("tiny-sd3", tmp_path / "m")
    with pytest.raises(ValueError, match="sd15, sdxl"):
        tiny_unet_config("sd21")


def test_sd15_folder_loads_offline_with_the_real_layout(tmp_path):
    from diffusers import StableDiffusionPipeline

    folder = ensure_tiny_model("tiny-sd15", tmp_path / "m")
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert pipe.vae_scale_factor == 8  # latents are 1/8 of the image, like the real model
    assert pipe.safety_checker is None
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert sum(name.endswith("attn1.processor") for name in pipe.unet.attn_processors) >= 2
    ids = pipe.tokenizer("a red fox", padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == 0 and ids[-1] == 1  # bos ... padded with eos


def test_sdxl_folder_has_two_text_encoders_feeding_the_unet(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    folder = ensure_tiny_model("tiny-sdxl", tmp_path / "m")
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True, add_watermarker=False)
    config = pipe.unet.config
    assert pipe.vae_scale_factor == 8
    assert config.cross_attention_dim == (pipe.text_encoder.config.hidden_size
                                          + pipe.text_encoder_2.config.hidden_size)
    assert config.addition_embed_type == "text_time"
    assert config.projection_class_embeddings_input_dim == (
        6 * config.addition_time_embed_dim + pipe.text_encoder_2.config.projection_dim)
    assert tiny_unet_config("sdxl")["transformer_layers_per_block"] == (1, 2)
