"""Built-in tiny conditioning models for `tiny-sd15` and `tiny-sdxl`: ControlNets, an IP-Adapter, a LoRA.

A manifest that says `controlnet: {type: canny}`, `ip_adapter: ...` or `lora: {name: tiny-style}`
with a tiny model must run anywhere, like the tiny base models do; so each tiny entry in the
registry points at `builtin:` locations built here on first use, deterministically (one seed per
part), next to the tiny base models (HOME/models/NAME/vN, N = `registry.TINY_BUILD_VERSION`:
bump it when anything built here changes).

They are random, like the tiny bases, but not inert: a ControlNet made by `from_unet` has
zero-initialised output convolutions (it changes nothing until trained), and a LoRA with a zero
`up` matrix is a no-op, so these get small random values there instead. That way the tests can
tell that each input really reaches the denoiser.

Builds go into a temp folder and are renamed into place, like the tiny bases.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from linfusion_devkit.tiny import TINY_MODELS, ensure_tiny_model
from linfusion_engine.loading import IP_ADAPTER_SUBFOLDER, LORA_FILE, quiet_progress_bars
from linfusion_engine.registry import TINY_BUILD_VERSION

CONTROLNET_TYPES: tuple[str, ...] = ("canny", "depth")
# Embedding widths of the control-map encoder: 4 entries = 3 downsamples = the VAE's 8x (recipes.md).
CONTROL_EMBEDDING_CHANNELS = (8, 16, 16, 16)
IP_ADAPTER_WEIGHT_NAME = "ip-adapter_tiny.safetensors"  # in IP_ADAPTER_SUBFOLDER, where the engine looks
IP_IMAGE_TOKENS = 4  # a plain IP-Adapter projects one image to 4 extra text tokens
IMAGE_ENCODER_SIZE = 32
IMAGE_ENCODER_PROJECTION = 32
LORA_NAME = "tiny-style"  # written as LORA_FILE, the file the engine reads from a `builtin:` LoRA folder
LORA_RANK = 4
# Output convs and LoRA `up` matrices get N(0, this^2) instead of zeros: visible, not explosive.
NONZERO_INIT_STD = 0.05
_SEEDS = {"canny": 101, "depth": 102, "ip_adapter": 201, "lora": 301}


def builtin_names(model: str) -> dict:
    """The `builtin:` location names of a tiny model's conditioning parts (what the registry lists)."""
    return {
        "controlnets": {kind: f"builtin:{model}-controlnet-{kind}" for kind in CONTROLNET_TYPES},
        "ip_adapter": f"builtin:{model}-ip-adapter",
        "loras": {LORA_NAME: f"builtin:{model}-lora-{LORA_NAME}"},
    }


def _split(name: str) -> tuple[str, str, str]:
    """`tiny-sd15-controlnet-canny` -> (`tiny-sd15`, `controlnet`, `canny`)."""
    for model in TINY_MODELS:
        prefix = f"{model}-"
        if name.startswith(prefix):
            rest = name[len(prefix):]
            for part in ("controlnet", "ip-adapter", "lora"):
                if rest == part or rest.startswith(part + "-"):
                    return model, part, rest[len(part) + 1:]
    raise ValueError(f"unknown tiny conditioning model {name!r}; names look like tiny-sd15-controlnet-canny, "
                     f"tiny-sd15-ip-adapter, tiny-sd15-lora-{LORA_NAME}")


def is_tiny_conditioning(name: str) -> bool:
    try:
        _split(name)
    except ValueError:
        return False
    return True


def _base_unet(model: str, models_dir: Path):
    from diffusers import UNet2DConditionModel

    folder = ensure_tiny_model(model, models_dir / model / f"v{TINY_BUILD_VERSION}")
    with quiet_progress_bars():
        return UNet2DConditionModel.from_pretrained(folder, subfolder="unet")


def _randomise(tensors, seed: int) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in tensors:
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * NONZERO_INIT_STD)


def _build_controlnet(model: str, kind: str, models_dir: Path, staging: Path) -> None:
    import torch
    from diffusers import ControlNetModel

    unet = _base_unet(model, models_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEEDS[kind])
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONTROL_EMBEDDING_CHANNELS)
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    _randomise([p for conv in zero_convs for p in conv.parameters()], _SEEDS[kind])
    # The conditioning embedding's last conv is zero-initialised too: without it the map is ignored.
    _randomise(controlnet.controlnet_cond_embedding.conv_out.parameters(), _SEEDS[kind] + 1)
    with quiet_progress_bars():
        controlnet.save_pretrained(staging, safe_serialization=True)


def _build_ip_adapter(model: str, models_dir: Path, staging: Path) -> None:
    """The offline IP-Adapter layout diffusers' `load_ip_adapter` reads (recipes.md)."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = _base_unet(model, models_dir)
    cross_dim = unet.config.cross_attention_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEEDS["ip_adapter"])
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=IMAGE_ENCODER_SIZE, patch_size=4, projection_dim=IMAGE_ENCODER_PROJECTION))
        generator = torch.Generator().manual_seed(_SEEDS["ip_adapter"])
        tensors = {
            "image_proj.proj.weight": torch.randn(IP_IMAGE_TOKENS * cross_dim, IMAGE_ENCODER_PROJECTION,
                                                  generator=generator) * 0.2,
            "image_proj.proj.bias": torch.zeros(IP_IMAGE_TOKENS * cross_dim),
            "image_proj.norm.weight": torch.ones(cross_dim),
            "image_proj.norm.bias": torch.zeros(cross_dim),
        }
        # One to_k_ip / to_v_ip pair per cross-attention layer, keyed 1, 3, 5... in attn_processors order.
        key_id = 1
        for name in unet.attn_processors:
            if name.endswith("attn1.processor"):
                continue
            attn = unet.get_submodule(name[: -len(".processor")])
            hidden = attn.to_k.out_features
            for proj in ("to_k_ip", "to_v_ip"):
                tensors[f"ip_adapter.{key_id}.{proj}.weight"] = (
                    torch.randn(hidden, cross_dim, generator=generator) * 0.2)  # (hidden, cross_dim)
            key_id += 2
    models = staging / IP_ADAPTER_SUBFOLDER
    models.mkdir(parents=True)
    save_file(tensors, str(models / IP_ADAPTER_WEIGHT_NAME))
    with quiet_progress_bars():
        encoder.save_pretrained(models / "image_encoder", safe_serialization=True)


def _build_lora(model: str, models_dir: Path, staging: Path) -> None:
    """A rank-4 LoRA on every attention projection of the UNet, in the diffusers/peft key format."""
    import torch
    from safetensors.torch import save_file

    unet = _base_unet(model, models_dir)
    generator = torch.Generator().manual_seed(_SEEDS["lora"])
    tensors = {}
    for name, module in unet.named_modules():
        if not (name.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                               "attn2.to_q", "attn2.to_out.0"))):
            continue
        tensors[f"unet.{name}.lora_A.weight"] = torch.randn(
            LORA_RANK, module.in_features, generator=generator) * 0.3  # (r, in)
        tensors[f"unet.{name}.lora_B.weight"] = torch.randn(
            module.out_features, LORA_RANK, generator=generator) * 0.3  # (out, r)
    save_file(tensors, str(staging / LORA_FILE), metadata={"format": "pt"})


def ensure_tiny_conditioning(name: str, folder: str | Path, models_dir: str | Path) -> Path:
    """The folder of tiny conditioning model `name`, building it there first if needed.

    Args:
        name: e.g. `tiny-sd15-controlnet-canny`, `tiny-sdxl-ip-adapter`, `tiny-sd15-lora-tiny-style`.
        folder: where it lives (`registry.resolve_location("builtin:NAME", models_dir)`).
        models_dir: HOME/models, where the matching tiny base model is (built too if needed).
    """
    model, part, kind = _split(name)
    folder, models_dir = Path(folder), Path(models_dir)
    marker = {"controlnet": "config.json", "ip-adapter": f"{IP_ADAPTER_SUBFOLDER}/{IP_ADAPTER_WEIGHT_NAME}",
              "lora": LORA_FILE}[part]
    if (folder / marker).is_file():
        return folder
    if part == "controlnet" and kind not in CONTROLNET_TYPES:
        raise ValueError(f"{model} has no tiny ControlNet of type {kind!r}; tiny types: {', '.join(CONTROLNET_TYPES)}")
    if part == "lora" and kind != LORA_NAME:
        raise ValueError(f"{model} has no tiny LoRA {kind!r}; the tiny LoRA is {LORA_NAME!r}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.building-", dir=folder.parent))
    try:
        staging.chmod(0o755)
        if part == "controlnet":
            _build_controlnet(model, kind, models_dir, staging)
        elif part == "ip-adapter":
            _build_ip_adapter(model, models_dir, staging)
        else:
            _build_lora(model, models_dir, staging)
        try:
            os.rename(staging, folder)  # atomic; fails when another process published first
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not (folder / marker).is_file():
                raise
        return folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
