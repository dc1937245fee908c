"""Loading a registry entry's base pipeline, offline: diffusers folders, HF cache snapshots, single files.

Both the renderer (`linfusion_engine.engine.Engine`) and the LinFusion distillation trainer (in the
devkit beside the engine) need the same pipeline from the same registry entry, so the rules live
here once:
- a single-file checkpoint (A1111 / ComfyUI / original SD layout) is read by diffusers'
  `from_single_file` against the component configs the project carries
  (`linfusion_engine/configs/FAMILY`), so nothing is fetched;
- a model without a tokenizer of its own (every single file) gets CLIP's real one, built from the
  vocabulary open-clip-torch ships (`linfusion_engine.tokenizers`); a folder's own always wins;
- no NSFW safety checker is loaded (see `load_base_pipeline`);
- the entry's VAE (`--vae`, a file or a folder) replaces the base's;
- the entry's prediction type (`--prediction-type`, or what `models add` read from the file) is laid
  over the base's scheduler config, so every sampler built from it (`make_scheduler`) agrees.

Everything runs with the Hugging Face hub switched offline. torch and diffusers are imported
inside the functions: the registry and manifest validation import this package without them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from linfusion_engine.checkpoints import config_folder
from linfusion_engine.tokenizers import clip_tokenizer

# The file diffusers' `save_lora_weights` writes: a LoRA given as a folder (a `builtin:` one) holds it.
LORA_FILE = "pytorch_lora_weights.safetensors"
# Where the published IP-Adapter folders (h94/IP-Adapter) keep their SD-1.5 weights and image encoder.
IP_ADAPTER_SUBFOLDER = "models"


@contextlib.contextmanager
def hub_offline():
    """Switch the Hugging Face hub client offline while loading.

    The engine only ever passes local folders with `local_files_only=True`, so nothing should try
    the network; this makes sure a component that would (a remote config, a missing file looked
    up by id) fails at once instead of waiting on a network that a render worker may not have.
    huggingface_hub reads HF_HUB_OFFLINE once at import, hence the constant as well as the variable.
    """
    from huggingface_hub import constants

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    saved_const = constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_const
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' warnings while a pipeline loads.

    Importing a pipeline makes transformers warn that its CLIP image processor falls back to PIL
    because torchvision is absent; the engine never uses that processor (no safety checker on the
    tiny models, and real ones work with the PIL fallback), so the warning only confuses users.
    Errors still show.
    """
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


@contextlib.contextmanager
def quiet_progress_bars():
    """Hide diffusers' and transformers' load/save progress bars for the duration.

    They are meant for interactive downloads; in a render worker's log, one bar per component per
    load is noise. The previous on/off state is restored afterwards.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was_on = (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled())
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on[0]:
            diffusers_logging.enable_progress_bar()
        if was_on[1]:
            transformers_logging.enable_progress_bar()


def dtype_kwarg() -> str:
    """diffusers 0.42 renamed from_pretrained's `torch_dtype` to `dtype` (the old name warns)."""
    import diffusers
    from packaging.version import Version

    return "dtype" if Version(diffusers.__version__).release >= (0, 42) else "torch_dtype"


def load_base_pipeline(registry, entry, *, dtype):
    """The base pipeline of registry `entry` in `dtype`, on the CPU (the caller moves it), offline.

    The caller has checked `registry.require_available(entry)`; tiny models are built already.
    """
    location = Path(registry.base_path(entry))
    if entry.family == "sdxl":
        from diffusers import StableDiffusionXLPipeline as pipeline_class

        # The tiny model has no watermark to add; real SD-XL keeps diffusers' default.
        extra = {"add_watermarker": False} if entry.is_tiny else {}
    else:
        from diffusers import StableDiffusionPipeline as pipeline_class

        # No NSFW safety checker: it blacks out false positives in concept art, costs a 1.2 GB CLIP
        # vision model, and studio tools (A1111, ComfyUI) do not run it either.
        extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    dtype_arg = {dtype_kwarg(): dtype}
    with quiet_transformers(), hub_offline(), quiet_progress_bars():
        if entry.vae:
            extra["vae"] = load_vae(registry.vae_path(entry), entry.family, dtype)
        tokenizers = built_tokenizers(entry.family, registry.models_dir, None if location.is_file() else location)
        if location.is_file():
            pipe = pipeline_class.from_single_file(str(location), config=str(config_folder(entry.family)),
                                                   local_files_only=True, **tokenizers, **dtype_arg, **extra)
        else:
            pipe = pipeline_class.from_pretrained(location, local_files_only=True, **tokenizers, **dtype_arg, **extra)
    if entry.prediction_type and pipe.scheduler.config.get("prediction_type") != entry.prediction_type:
        # e.g. an SD-2.1-base fine-tune (epsilon) whose file looks like SD-2.1 (v-prediction)
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=entry.prediction_type)
    return pipe


def built_tokenizers(family: str, models_dir: Path, folder: Path | None) -> dict:
    """CLIP tokenizers for the pipeline parts a model lacks (a single file, `folder=None`, has none).

    SD-1.5 and SD-XL's first tokenizer pad with the end token; SD-2.1's OpenCLIP tokenizer and
    SD-XL's second pad with "!" (id 0), as the published models' own tokenizers do.
    """
    pads = {"tokenizer": "!" if family == "sd21" else "<|endoftext|>"}
    if family == "sdxl":
        pads["tokenizer_2"] = "!"
    missing = {name: pad for name, pad in pads.items() if folder is None or not (folder / name).is_dir()}
    if not missing:
        return {}

    cache = Path(models_dir) / "tokenizers" / "clip-bpe-16e6"
    return {name: clip_tokenizer(cache, pad_token=pad) for name, pad in missing.items()}


def load_vae(location: Path, family: str, dtype):
    """A VAE that replaces the base's: one file (original or diffusers keys) or a folder (or a pipeline's vae/)."""
    from diffusers import AutoencoderKL

    dtype_arg = {dtype_kwarg(): dtype}
    location = Path(location)
    if location.is_file():
        return AutoencoderKL.from_single_file(str(location), config=str(config_folder(family)), subfolder="vae",
                                              local_files_only=True, **dtype_arg)
    subfolder = "vae" if (location / "vae" / "config.json").is_file() else None
    return AutoencoderKL.from_pretrained(location, subfolder=subfolder, local_files_only=True, **dtype_arg)
