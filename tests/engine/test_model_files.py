"""The full-size random model files of `tests/model_files.py` are what they claim to be.

Each writer is checked against the loader that defines its format: diffusers' `from_single_file`
with the configs the project carries (a single file's every tensor must come back exactly, which
proves both the original-layout mapping and that the carried configs describe the checkpoints),
huggingface_hub / diffusers for the cache snapshot, the product's `LinFusion.from_pretrained`
for the published LinFusion layout. Big files are written once per module under a temp folder
and deleted as soon as their test is done.

Order matters for memory: the SD-2.1 and SD-XL tests come first, before the module-scoped SD-1.5
components (2.1 GB) exist.

The module takes ~3 minutes without SD-XL and ~5 with it on a quiet 2-core machine, so all of it
is `heavy`: `make test-heavy` (and .ci/run) runs it; `make test` keeps tests/fullsize/, which loads
and renders these files through the product itself.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import model_files
from model_files import CONFIGS

pytestmark = [pytest.mark.slow, pytest.mark.heavy]


@pytest.fixture(autouse=True)
def _give_memory_back():
    """Each test here frees gigabytes; hand them back to the OS so the next one starts low."""
    yield
    model_files.release_memory()


@pytest.fixture(scope="module")
def files_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model-files")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tokenizer():
    return model_files.tokenizer()


@pytest.fixture(scope="module")
def sd15():
    """SD-1.5's components in fp16 (2.1 GB), shared by the tests that write SD-1.5 files."""
    components = model_files.random_components("sd15")
    yield components
    components.clear()
    model_files.release_memory()


@pytest.fixture(scope="module")
def sd15_file(files_dir, sd15):
    path = model_files.write_single_file(files_dir / "sd15-random.safetensors", "sd15", components=sd15)
    yield path
    path.unlink(missing_ok=True)


def assert_same_tensors(loaded: torch.nn.Module, expected, dtype: torch.dtype, what: str) -> None:
    """Every tensor of `loaded` equals the expected one (cast to `dtype`), none missing or extra.

    `expected`: a module or (name, tensor) pairs (`model_files.random_tensors`), compared one at a
    time so the expected side can be streamed.
    """
    items = expected.state_dict().items() if isinstance(expected, torch.nn.Module) else expected
    state = loaded.state_dict()
    seen, mismatched = set(), []
    for name, tensor in items:
        seen.add(name)
        got = state.get(name)
        if got is None or got.is_meta or got.dtype != dtype or not torch.equal(got, tensor.to(dtype)):
            mismatched.append(name)
    assert not mismatched, f"{what}: {len(mismatched)} tensors differ, e.g. {mismatched[:5]}"
    assert set(state) == seen, f"{what}: unexpected {sorted(set(state) - seen)[:5]}"


def _offline_single_file(pipeline_cls, path: Path, family: str, tokenizer, dtype: torch.dtype):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # tests/conftest.py: nothing may be downloaded
    extra = {"tokenizer_2": tokenizer} if family == "sdxl" else {}
    return pipeline_cls.from_single_file(str(path), config=str(CONFIGS / family), local_files_only=True,
                                         tokenizer=tokenizer, dtype=dtype, **extra)


def _assert_converted(converted: dict, module: torch.nn.Module, what: str) -> None:
    expected = module.state_dict()
    assert set(converted) == set(expected), f"{what}: {sorted(set(converted) ^ set(expected))[:5]}"
    assert all(torch.equal(converted[key], value) for key, value in expected.items()), what


def test_mapping_is_what_diffusers_converters_undo_on_tiny_models():
    """Seconds, not minutes: the original-layout mapping fed to diffusers' own converters (the
    ones `from_single_file` runs) gives back every tensor, on tiny models of the same block
    structure — SD-XL's label_emb and 3-entry block layout, the VAE's reversed decoder and 1x1
    attention convs, OpenCLIP's fused q/k/v and transposed, here non-square, text_projection."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as converters
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from linfusion_devkit.tiny import tiny_unet_config, tiny_vae_config

    torch.manual_seed(0)
    for family in ("sd15", "sdxl"):
        unet = UNet2DConditionModel(**tiny_unet_config(family))
        original = model_files.unet_original_state_dict(unet)
        assert all(key.startswith("model.diffusion_model.") for key in original)
        stripped = {key.removeprefix("model.diffusion_model."): value for key, value in original.items()}
        _assert_converted(converters.convert_ldm_unet_checkpoint(original, dict(unet.config)), unet, family)
        if family == "sdxl":
            assert "label_emb.0.2.weight" in stripped
    vae = AutoencoderKL(**tiny_vae_config())
    original = model_files.vae_original_state_dict(vae)
    assert original["first_stage_model.decoder.mid.attn_1.proj_out.weight"].ndim == 4
    _assert_converted(converters.convert_ldm_vae_checkpoint(original, dict(vae.config)), vae, "vae")

    config = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            projection_dim=16, max_position_embeddings=77)
    clip_l = CLIPTextModel(config)
    converted = converters.convert_ldm_clip_checkpoint(
        model_files.hf_clip_original_state_dict(clip_l, "conditioner.embedders.0.transformer."))
    converted.pop("text_model.embeddings.position_ids")  # in the file; the model has it as a non-persistent buffer
    flat = {key.removeprefix("text_model."): value for key, value in converted.items()}
    _assert_converted(flat if "embeddings.token_embedding.weight" in clip_l.state_dict() else converted, clip_l, "clip-l")

    open_clip = CLIPTextModelWithProjection(config)
    prefix = "conditioner.embedders.1.model."
    original = model_files.openclip_original_state_dict(open_clip, prefix, family="sdxl", component="text_encoder_2")
    assert original[prefix + "text_projection"].shape == (32, 16)  # (width, embed): x @ P, OpenCLIP's way
    _assert_converted(converters.convert_open_clip_checkpoint(open_clip, original, prefix=prefix), open_clip,
                      "openclip")


def test_sd21_single_file_loads_bit_exactly(files_dir, tokenizer):
    """SD-2.1: OpenCLIP text tower (24 blocks in the file, 23 in the model), v-prediction UNet."""
    from diffusers import StableDiffusionPipeline

    # Written from components freed right after, compared against the streamed `random_tensors`:
    # source (2.6 GB) + file tensors (2.6 GB) + fp32 copy (5.2 GB) would not fit beside others' tests.
    path = model_files.write_single_file(files_dir / "sd21-random.safetensors", "sd21")
    model_files.release_memory()
    try:
        with safe_open(str(path), "pt") as handle:
            keys = set(handle.keys())
            # diffusers tells v2 from v1 by this cross-attention key's width (1024 = OpenCLIP ViT-H)
            to_k = model_files.UNET_PREFIX + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
            assert handle.get_slice(to_k).get_shape() == [320, 1024]
            assert handle.get_slice("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight").get_shape() \
                == [3 * 1024, 1024]
        assert "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight" in keys
        assert "cond_stage_model.model.transformer.resblocks.24.ln_1.weight" not in keys
        assert not any(key.startswith("cond_stage_model.transformer.") for key in keys)

        pipe = _offline_single_file(StableDiffusionPipeline, path, "sd21", tokenizer, torch.float32)
        assert pipe.scheduler.config.prediction_type == "v_prediction"
        assert pipe.text_encoder.config.num_hidden_layers == 23
        for name in ("unet", "vae", "text_encoder"):
            assert_same_tensors(getattr(pipe, name), model_files.random_tensors("sd21", name), torch.float32,
                                f"sd21 {name}")
        del pipe
    finally:
        path.unlink(missing_ok=True)


@pytest.mark.heavy
def test_sdxl_single_file_loads_bit_exactly(files_dir, tokenizer):
    """SD-XL round trip, in fp16 and streamed. Marked heavy: on this 2-core machine it takes about
    1.5 min on its own (~40 s to build and write 6.9 GB, ~50 s to load and compare) and ~7.5 GB of
    RSS (of which 6.9 GB are the file's mapped pages) -- more than the rest of this module together.

    The components are 7 GB in fp16 and a loaded copy in fp32 would be 14 GB more, beyond this
    machine's share. So the file is written from components that are freed right after, loaded in
    fp16 (diffusers then keeps the file's memory-mapped tensors, no copy), and compared against
    `random_tensors`, which rebuilds each source tensor alone.
    """
    from diffusers import StableDiffusionXLPipeline

    path = model_files.write_single_file(files_dir / "sdxl-random.safetensors", "sdxl")
    model_files.release_memory()
    try:
        with safe_open(str(path), "pt") as handle:
            keys = set(handle.keys())
            proj = handle.get_slice("conditioner.embedders.1.model.text_projection").get_shape()
        assert proj == [1280, 1280]
        assert "model.diffusion_model.label_emb.0.0.weight" in keys
        assert "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight" in keys
        pipe = _offline_single_file(StableDiffusionXLPipeline, path, "sdxl", tokenizer, torch.float16)
        for name in model_files.component_names("sdxl"):
            assert_same_tensors(getattr(pipe, name), model_files.random_tensors("sdxl", name), torch.float16,
                                f"sdxl {name}")
        del pipe
    finally:
        path.unlink(missing_ok=True)


def test_sd15_single_file_loads_bit_exactly_and_renders_finite(sd15, sd15_file, tokenizer):
    from diffusers import StableDiffusionPipeline

    with safe_open(str(sd15_file), "pt") as handle:
        keys = set(handle.keys())
        assert handle.get_slice(model_files.UNET_PREFIX + "input_blocks.1.1.proj_in.weight").get_shape() == [320, 320, 1, 1]
    extras = {"model_ema.decay", "model_ema.num_updates", "alphas_cumprod", "betas",
              "cond_stage_model.transformer.text_model.embeddings.position_ids"}
    assert extras <= keys  # present, so the round trip below proves the loader ignores them
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys

    pipe = _offline_single_file(StableDiffusionPipeline, sd15_file, "sd15", tokenizer, torch.float32)
    for name in ("unet", "vae", "text_encoder"):
        assert_same_tensors(getattr(pipe, name), sd15[name], torch.float32, f"sd15 {name}")

    # The random weights must give a finite image in fp32 (no CFG: one UNet pass per step, half the time).
    image = pipe("a castle on a hill", height=256, width=256, num_inference_steps=2, guidance_scale=1.0,
                 output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 256, 256, 3)
    assert np.isfinite(image).all()


def test_sd15_ckpt_is_torch_zip_with_the_same_tensors(files_dir, sd15, sd15_file):
    from diffusers import UNet2DConditionModel

    ckpt = model_files.write_single_file(files_dir / "sd15-random.ckpt", "sd15", fmt="ckpt", components=sd15)
    try:
        loaded = torch.load(ckpt, weights_only=True, mmap=True)
        assert set(loaded) == {"state_dict"}
        expected = model_files.original_state_dict(sd15, "sd15")
        assert set(loaded["state_dict"]) == set(expected)
        assert all(torch.equal(loaded["state_dict"][key], value) for key, value in expected.items())
        del loaded
        # diffusers reads the .ckpt (unwrapping "state_dict"); the UNet is the bulk of the mapping.
        unet = UNet2DConditionModel.from_single_file(str(ckpt), config=str(CONFIGS / "sd15"), subfolder="unet",
                                                     local_files_only=True, dtype=torch.float16)
        assert_same_tensors(unet, sd15["unet"], torch.float16, "sd15 ckpt unet")
    finally:
        ckpt.unlink(missing_ok=True)


def test_hf_cache_snapshot_is_found_and_loads_bit_exactly(tmp_path, monkeypatch, sd15):
    from diffusers import StableDiffusionPipeline

    from linfusion_engine.registry import cached_snapshot

    hub = tmp_path / "hub"
    repo_id = "studio-tests/sd15-random"
    snapshot = model_files.write_hf_cache_snapshot(hub, repo_id, "sd15", components=sd15)
    try:
        repo_dir = hub / "models--studio-tests--sd15-random"
        assert (repo_dir / "refs" / "main").read_text() == snapshot.name and len(snapshot.name) == 40
        files = sorted(p for p in snapshot.rglob("*") if not p.is_dir())
        names = {str(p.relative_to(snapshot)) for p in files}
        assert {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                "scheduler/scheduler_config.json"} <= names
        assert any(name.startswith("tokenizer/") for name in names)
        for path in files:  # relative links into ../../blobs, as huggingface_hub makes them
            assert path.is_symlink() and not os.path.isabs(os.readlink(path))
            assert path.resolve().parent == (repo_dir / "blobs").resolve()
        index = json.loads((snapshot / "model_index.json").read_text())
        assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]

        monkeypatch.setenv("HF_HUB_CACHE", str(hub))
        assert cached_snapshot(repo_id) == snapshot
        # by hub id, offline: huggingface_hub resolves refs/main -> the snapshot
        pipe = StableDiffusionPipeline.from_pretrained(repo_id, cache_dir=str(hub), local_files_only=True,
                                                       dtype=torch.float16)
        for name in ("unet", "vae", "text_encoder"):
            assert_same_tensors(getattr(pipe, name), sd15[name], torch.float16, f"snapshot {name}")
        del pipe
    finally:
        shutil.rmtree(hub, ignore_errors=True)


@pytest.mark.parametrize("family, layers, heads", [
    ("sd15", 16, {8}), ("sd21", 16, {5, 10, 20}), ("sdxl", 70, {10, 20}),
])
def test_published_linfusion_loads_and_fits_the_full_size_unet(files_dir, sd15, family, layers, heads):
    from linfusion_engine.linfusion import LinFusion

    folder = files_dir / f"linfusion-{family}"
    # SD-1.5 from the real full-size UNet; the others from their carried config (meta device)
    unet = sd15["unet"] if family == "sd15" else model_files.meta_component(family, "unet")
    model_files.write_published_linfusion(folder, unet if family == "sd15" else family)
    try:
        config = json.loads((folder / "config.json").read_text())
        assert config["_class_name"] == "LinFusion" and config["_diffusers_version"] == "0.30.0"
        entries = config["modules_list"]
        assert len(entries) == layers and {entry["heads"] for entry in entries} == heads
        blocks = [entry["module_name"].split(".")[0] for entry in entries]
        assert blocks == sorted(blocks, key=("down_blocks", "up_blocks", "mid_block").index)
        mids = {entry["projection_mid_dim"] for entry in entries}
        assert mids == ({40, 80} if family == "sdxl" else {None})
        on_disk = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
        assert len(on_disk) == 17 * layers and {t.dtype for t in on_disk.values()} == {torch.float16}
        if family == "sd15":
            assert round(os.path.getsize(folder / "diffusion_pytorch_model.safetensors") / 1e6) == 198

        dtype = torch.float16 if family == "sdxl" else torch.float32  # LinFusion-XL: 0.87 GB in fp16, twice that in fp32
        model = LinFusion.from_pretrained(folder, torch_dtype=dtype)
        assert model.module_names == [entry["module_name"] for entry in entries]
        assert model.check_layout(unet)
        state = model.state_dict()
        assert set(state) == set(on_disk)
        assert all(torch.equal(state[key], value.to(dtype)) for key, value in on_disk.items())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_bad_files_are_what_they_claim(files_dir):
    from diffusers import AutoencoderKL
    from safetensors import SafetensorError

    folder = files_dir / "bad"
    text = model_files.write_text_as_checkpoint(folder)
    assert text.read_text().startswith("version https://git-lfs")
    with pytest.raises(SafetensorError):
        load_file(str(text))

    truncated = model_files.write_truncated_checkpoint(folder)
    with pytest.raises(SafetensorError):
        load_file(str(truncated))

    lora = load_file(str(model_files.write_lora_file(folder)))
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in lora
    assert any(key.startswith("lora_te_") for key in lora)

    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        torch.load(model_files.write_pickled_ckpt(folder), weights_only=True)

    unknown = load_file(str(model_files.write_unknown_architecture(folder)))
    assert "double_blocks.0.img_attn.norm.key_norm.scale" in unknown

    # the standalone VAE is a real one: diffusers loads it against the carried config, bit for bit
    vae_path = model_files.write_vae_file(folder)
    with safe_open(str(vae_path), "pt") as handle:
        keys = set(handle.keys())
    assert "encoder.conv_in.weight" in keys and "decoder.up.0.block.0.conv1.weight" in keys
    assert not any(key.startswith("first_stage_model.") for key in keys)
    vae = AutoencoderKL.from_single_file(str(vae_path), config=str(CONFIGS / "sd15"), subfolder="vae",
                                         local_files_only=True, dtype=torch.float16)
    assert_same_tensors(vae, model_files.random_tensors("sd15", "vae"), torch.float16, "standalone vae")
    shutil.rmtree(folder, ignore_errors=True)
