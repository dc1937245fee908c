"""A studio's first day, at full size: real architectures and file formats, random weights, on the CPU.

The tiny models prove the plumbing; these prove that a real SD-1.5 checkpoint loads through the
product. Each model is built once per module with random weights in the real architecture
(`tests/model_files.py`), registered with the real `linstudio models add`, rendered from a
manifest by the real `linstudio run` (128 px, 2 steps, LinFusion from_unet and softmax) against
the session's Prefect server, and read back from the catalogue.

SD-1.5 is ~1.07 B parameters (a 2.1 GB fp16 file, ~4.3 GB in fp32 while rendering); SD-XL
(~3.5 B, 6.9 GB on disk, ~14 GB in fp32) is in `test_fullsize_sdxl.py`, marked `heavy`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import model_files

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.fullsize]

LINSTUDIO = str(Path(sys.executable).parent / "linstudio")
# Over 77 CLIP tokens, with accents: the real tokenizer must count it and say what it cut.
LONG_PROMPT = ("matte painting of a ruined château on a cliff above a stormy fjord, crème-coloured stone, "
               "ivy, broken stained glass windows glowing amber, ravens circling the towers, volumetric "
               "fog rolling in from the sea, a lone knight in weathered armour climbing the serpentine "
               "path, lightning on the horizon, ultra detailed, dramatic lighting, by a studio concept "
               "artist, trending on a portfolio site, the last words here are beyond the window")


def manifest_text(model: str, side: int) -> str:
    return f"""
version: 1
team: film
project: first-day
defaults:
  model: {model}
  steps: 2
  guidance: 5.0
  scheduler: euler
  sizes: [{side}x{side}]
assets:
  - id: chateau-linear
    prompt: "{LONG_PROMPT}"
    attention: linear
    seeds: [3]
  - id: chateau-softmax
    prompt: "a ruined château on a cliff, crème stone"
    attention: softmax
    seeds: [3]
"""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def linstudio(env: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([LINSTUDIO, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def studio_env(tmp_path, prefect_api) -> dict:
    """A newcomer's machine: an empty LINSTUDIO_HOME, the embedded catalogue, the session Prefect server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINSTUDIO_")}
    env.update(LINSTUDIO_HOME=str(tmp_path / "home"), PREFECT_API_URL=prefect_api,
               HF_HUB_CACHE=str(tmp_path / "hf-empty"))
    return env


@pytest.fixture(scope="module")
def sd15_file(tmp_path_factory) -> Path:
    """SD-1.5 as one original-layout .safetensors, as A1111 / ComfyUI users have it (fp16, 2.1 GB)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    path = model_files.write_single_file(folder / "dreamy_v8.safetensors", "sd15")
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def sd15_hub_cache(tmp_path_factory) -> Path:
    """SD-1.5 as a Hugging Face cache snapshot (refs/, snapshots/, blobs as symlinks)."""
    import shutil

    cache = tmp_path_factory.mktemp("hf-hub")
    model_files.write_hf_cache_snapshot(cache, "studio/dreamy-diffusers", "sd15", seed=1)
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


def _render_and_read(env: dict, manifest_dir: Path, model: str, side: int = 128) -> dict[str, dict]:
    """Render the first-day manifest at `side` px (the load path is under test, not the pixels: SD-1.5
    renders at 128 px to stay cheap) and read both renders back from the catalogue."""
    manifest = manifest_dir / "first-day.yaml"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(manifest_text(model, side))
    done = linstudio(env, "run", str(manifest), "--json")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    summary = json.loads(done.stdout)
    assert summary["counts"]["rendered"] == 2, summary

    from catalogue import Catalogue

    home = Path(env["LINSTUDIO_HOME"])
    catalogue = Catalogue.open(f"sqlite:///{home / 'catalogue.db'}", f"file://{home / 'store'}")
    try:
        renders = {r["asset_id"]: catalogue.render(r["render_id"]) for r in catalogue.renders(limit=10)}
        for render in renders.values():
            image = Image.open(io.BytesIO(catalogue.store.get(render["object_key"])))
            pixels = np.asarray(image.convert("RGB"))
            assert image.size == (side, side) and pixels.std() > 0  # an image, not a blank
        assert catalogue.check().ok
    finally:
        catalogue.close()
    return renders


def test_a_single_file_checkpoint_renders_with_two_commands(studio_env, sd15_file, tmp_path):
    added = linstudio(studio_env, "models", "add", "dreamy", "--base", str(sd15_file))
    assert added.returncode == 0, added.stderr
    assert "registered 'dreamy' (sd15, single file)" in added.stdout and "family sd15:" in added.stdout

    renders = _render_and_read(studio_env, tmp_path / "manifests", "dreamy")
    sha = file_sha256(sd15_file)
    from linfusion_engine.registry import ModelRegistry

    home = Path(studio_env["LINSTUDIO_HOME"])
    registry = ModelRegistry(home / "models.yaml", home / "models")
    identity = registry.identity(registry.get("dreamy"))
    linear, softmax = renders["chateau-linear"]["engine"], renders["chateau-softmax"]["engine"]
    for meta in (linear, softmax):
        assert meta["base"] == str(sd15_file) and meta["base_format"] == "single file"
        assert meta["weights"] == {"base": sha} and meta["model_identity"] == identity
        assert meta["family"] == "sd15" and meta["linfusion"] == "from_unet"
    assert (linear["attention"], softmax["attention"]) == ("linear", "softmax")
    # The real CLIP tokenizer counted the long prompt and says what the model did not see.
    cut = linear["prompt_truncated"]["prompt"]
    assert cut["kept"] == 75 and cut["tokens"] > 75 and "beyond the window" in cut["dropped_text"]
    assert softmax["prompt_truncated"] == {}

    ls = linstudio(studio_env, "models", "ls")
    row = next(line.split() for line in ls.stdout.splitlines() if line.startswith("dreamy "))
    assert row[1:6] == ["sd15", "512", "single-file", "2.0GiB", "untrained"], ls.stdout


def test_an_hf_cache_snapshot_renders_by_its_hub_id_with_a_vae_file(studio_env, sd15_hub_cache, tmp_path):
    """A cached hub id, and a favourite VAE as one standalone file (original keys, no prefix)."""
    env = {**studio_env, "HF_HUB_CACHE": str(sd15_hub_cache)}
    vae = model_files.write_vae_file(tmp_path / "vae", seed=9)
    added = linstudio(env, "models", "add", "dreamy-hub", "--base", "studio/dreamy-diffusers", "--vae", str(vae))
    assert added.returncode == 0, added.stderr
    assert "(sd15, hub)" in added.stdout and added.stderr == ""
    renders = _render_and_read(env, tmp_path / "manifests", "dreamy-hub")
    meta = renders["chateau-linear"]["engine"]
    assert meta["base"] == "studio/dreamy-diffusers" and meta["base_format"] == "hub"
    assert set(meta["weights"]) >= {"base/unet/diffusion_pytorch_model.safetensors",
                                    "base/text_encoder/model.safetensors"}
    assert meta["weights"]["vae"] == file_sha256(vae)  # the VAE file counts in the identity, by contents
    assert meta["prompt_truncated"]["prompt"]["kept"] == 75  # the folder's own tokenizer, also real CLIP


def test_published_linfusion_weights_mount_on_the_full_size_unet_and_unmount_bit_exactly(sd15_file, tmp_path):
    """The published layout (17 tensors per layer, 16 layers) on the UNet read from the single file."""
    import torch
    from diffusers import UNet2DConditionModel

    from linfusion_engine.checkpoints import config_folder
    from linfusion_engine.engine import hub_offline
    from linfusion_engine.linfusion import LinFusion, is_mounted

    published = model_files.write_published_linfusion(tmp_path / "LinFusion-1-5", "sd15", seed=5)
    with hub_offline():
        unet = UNet2DConditionModel.from_single_file(str(sd15_file), config=str(config_folder("sd15")),
                                                     subfolder="unet", local_files_only=True, torch_dtype=torch.float32)
    linfusion = LinFusion.from_pretrained(published)
    assert len(linfusion.processors) == 16
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 16, 16, generator=generator)  # (B, C, H/8, W/8) for 128 px
    context = torch.randn(1, 77, 768, generator=generator)  # (B, tokens, CLIP-L width)

    def forward():
        with torch.inference_mode():
            return unet(latents, 500, encoder_hidden_states=context).sample

    before_state = {k: v.clone() for k, v in unet.state_dict().items()}
    before = forward()
    linfusion.mount(unet)
    assert is_mounted(unet)
    mounted = forward()
    assert torch.isfinite(mounted).all() and not torch.equal(mounted, before)
    LinFusion.unmount(unet)
    assert not is_mounted(unet)
    assert torch.equal(forward(), before)
    after_state = unet.state_dict()
    assert after_state.keys() == before_state.keys()
    assert all(torch.equal(after_state[k], before_state[k]) for k in before_state)
