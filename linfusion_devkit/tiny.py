"""Built-in tiny models `tiny-sd15` and `tiny-sdxl`: random weights, real architectures.

They exist so that the demo, the tests and CI run end to end on a laptop CPU with no network
and no multi-GB download. Their weights are random: they make noise, not art. What they do
reproduce is everything the engine touches: the pipeline classes and folder layout of SD-1.5 and
SD-XL, a VAE that downsamples 8x like the real one (so latent sizes are the real ones), text
encoders and tokenizers that load offline, and self-attention layers for LinFusion to replace.

A build is deterministic — the same seed gives the same bytes on every machine with the same
torch — so a tiny model's identity is its build version (`registry.TINY_BUILD_VERSION`, bump it
when anything here changes what is built), not a hash of its files.

Builds go into a temp folder next to the target and are renamed into place, so a crashed build
never leaves a half-written model and two processes racing to build end with one complete copy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

from linfusion_engine.loading import quiet_progress_bars

TINY_MODELS: dict[str, str] = {"tiny-sd15": "sd15", "tiny-sdxl": "sdxl"}
BUILD_SEED = 20240903
# The file whose presence marks a finished build (written last by save_pretrained's layout,
# and a rename makes the whole folder appear at once anyway).
_COMPLETE_MARKER = "model_index.json"

TEXT_HIDDEN = 32  # hidden size of each tiny CLIP text encoder
TEXT_PROJECTION = 32  # SD-XL's second encoder projects its pooled output to this size
TIME_EMBED_DIM = 8  # SD-XL micro-conditioning: each of the 6 size numbers becomes 8 features
MAX_TOKENS = 77  # CLIP's context length; the pipelines pad and truncate to it

# Model init draws from torch's global RNG; a lock keeps two threads of one process from
# interleaving their draws (processes have their own RNGs).
_BUILD_LOCK = threading.Lock()


def tiny_unet_config(family: str) -> dict:
    """The UNet2DConditionModel config of a tiny model (also used by the attention benchmark).

    Shapes follow the real family at toy width: SD-1.5 has self-attention at the highest
    resolution and none at the lowest; SD-XL has none at the highest, a text-time embedding and
    two transformer layers per block at the lowest. In these configs `attention_head_dim` is the
    number of heads (a diffusers naming quirk kept from the original SD configs).
    """
    if family == "sd15":
        return {
            "sample_size": 8,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "cross_attention_dim": TEXT_HIDDEN,
            "attention_head_dim": 4,
            "norm_num_groups": 8,
        }
    if family == "sdxl":
        return {
            "sample_size": 8,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": 2 * TEXT_HIDDEN,  # both encoders' hidden states, concatenated
            "attention_head_dim": (2, 4),
            "transformer_layers_per_block": (1, 2),
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": TIME_EMBED_DIM,
            # 6 size numbers (original size, crop, target size) x 8 features + the pooled text.
            "projection_class_embeddings_input_dim": 6 * TIME_EMBED_DIM + TEXT_PROJECTION,
            "norm_num_groups": 8,
        }
    raise ValueError(f"no tiny UNet for family {family!r}; tiny families: sd15, sdxl")


def tiny_vae_config() -> dict:
    """The AutoencoderKL config of the tiny models: four blocks, three downsamples (8x like the real
    VAE) at 8-16 channels. Public because the GPU bench and the single-file mapping test build it too."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (8, 16, 16, 16),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 64,
    }


def _scheduler_config() -> dict:
    """SD's DDIM training schedule, with the settings that keep diffusers from warning."""
    return {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }


def tiny_tokenizer():
    """A byte-level CLIP tokenizer: no package ships a CLIP vocabulary, and this needs none.

    Public because `tests/model_files.py` gives its full-size random models the same one.

    Vocab: the two special tokens, every byte symbol, every byte symbol + "</w>" (514 entries),
    no merges. `model_max_length` must be given: without it the pipeline overflows.
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
    for symbol in symbols:
        vocab[symbol + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


def _text_config():
    from transformers import CLIPTextConfig

    # Token ids match `tiny_tokenizer`; SD-XL reads hidden_states[-2], so at least 2 layers.
    return CLIPTextConfig(
        vocab_size=514,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_PROJECTION,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def build_tiny_pipeline(family: str):
    """A fresh tiny pipeline of `family` (fp32, CPU), identical on every call.

    The global torch RNG is seeded inside `fork_rng`, so the caller's random state is untouched.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet_config = tiny_unet_config(family)  # raises for an unknown family before any work
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(BUILD_SEED)
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**tiny_vae_config())
        text_encoder = CLIPTextModel(_text_config())
        text_encoder_2 = CLIPTextModelWithProjection(_text_config()) if family == "sdxl" else None
    scheduler = DDIMScheduler(**_scheduler_config())

    if family == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
            tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(), unet=unet, scheduler=scheduler,
            add_watermarker=False,
        )
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def is_built(folder: Path) -> bool:
    return (Path(folder) / _COMPLETE_MARKER).is_file()


def _publish(staging: Path, folder: Path) -> Path:
    """Rename a finished build into place; if another process got there first, keep theirs."""
    try:
        os.rename(staging, folder)  # atomic on one filesystem; fails if `folder` is non-empty
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not is_built(folder):
            raise
    return folder


def ensure_tiny_model(name: str, folder: str | Path) -> Path:
    """The folder of built-in tiny model `name`, building it there first if it is not built yet.

    Args:
        name: `tiny-sd15` or `tiny-sdxl`.
        folder: where it lives (`ModelRegistry.base_path(entry)`, i.e. HOME/models/NAME/vN).
    """
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; built-in tiny models: {', '.join(TINY_MODELS)}")
    folder = Path(folder)
    if is_built(folder):
        return folder
    if folder.exists() and any(folder.iterdir()):
        raise RuntimeError(
            f"{folder} exists but holds no finished tiny model (no {_COMPLETE_MARKER}); "
            f"delete the folder and it will be rebuilt on next use")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.building-", dir=folder.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the published model is a shared cache
        pipe = build_tiny_pipeline(TINY_MODELS[name])
        with quiet_progress_bars():
            pipe.save_pretrained(staging, safe_serialization=True)
        return _publish(staging, folder)  # POSIX rename also replaces an empty `folder`
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
