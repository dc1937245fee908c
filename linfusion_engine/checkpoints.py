"""Single-file checkpoints: what a `.safetensors` / `.ckpt` file is, told from its keys and shapes.

Studios keep their Stable Diffusion models the way A1111, ComfyUI and the original CompVis code
save them: one file holding the UNet (`model.diffusion_model.*`), the VAE (`first_stage_model.*`)
and the text encoder(s) (`cond_stage_model.*` or, for SD-XL, `conditioner.embedders.N.*`). Such a
file says nothing of its architecture in words, and people hand us the wrong file often (a LoRA,
a VAE, an inpainting model, a truncated download), so `linstudio models add` reads the keys and
shapes first and either names the family or refuses with one line naming the file and what it is.

Reading is cheap on purpose: a safetensors header is read without touching the tensors, and a
`.ckpt` is memory-mapped. A `.ckpt` is a pickle, and a pickle can run code: it is only ever loaded
with `torch.load(weights_only=True)`, which refuses anything but tensors and plain containers.

What the shapes tell, and what they do not:
- the family: cross-attention width 768 (CLIP ViT-L) is SD-1.x, 1024 (OpenCLIP ViT-H) SD-2.x, and
  the second OpenCLIP text encoder of `conditioner.embedders.1` is SD-XL base;
- v-prediction: never from shapes. SD-2.1 (768 px) and SD-2.1-base (512 px) have identical
  tensors; a `v_pred` key (A1111 / ComfyUI's marker) says v-prediction. Without it an sd21 file is
  taken as SD-2.1 itself (v-prediction, 768 px) and `models add` says it assumed so.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# A cross-attention key present in every SD UNet: its input width is the text encoder's.
_CROSS_ATTN_KEYS = (
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",  # SD-1.x / 2.x
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",  # SD-XL
)
_IN_CONV_KEY = "model.diffusion_model.input_blocks.0.0.weight"
_TEXT_ENCODER_PREFIXES = {
    "sd15": ("cond_stage_model.transformer.",),
    "sd21": ("cond_stage_model.model.",),
    "sdxl": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
}
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
# The side each family was trained at (SD-2.1: 768; its -base variant 512 cannot be told from shapes).
NATIVE_SIZES = {"sd15": 512, "sd21": 768, "sdxl": 1024}


class CheckpointError(ValueError):
    """A file that cannot be used as asked; the message names the file and what is wrong."""


class UnknownArchitectureError(CheckpointError):
    """A readable model whose keys or configs are not SD-1.x, SD-2.x or SD-XL base (a family may still be given)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a single-file Stable Diffusion checkpoint is.

    Args:
        path: the file.
        format: `safetensors` or `ckpt` (a pickle, loaded with weights_only).
        family: sd15, sd21 or sdxl.
        prediction_type: `epsilon` or `v_prediction`.
        native_size: the side the family was trained at (SD-2.1: 768, assumed; see the module docstring).
        has_vae: False for "noVAE" files, which need `--vae`.
        evidence: the sentence `models add` prints: what in the file told the family.
        assumptions: what could not be told from the file and was assumed (printed as notes).
    """

    path: Path
    format: str
    family: str
    prediction_type: str
    native_size: int
    has_vae: bool
    evidence: str
    assumptions: list[str] = field(default_factory=list)


def read_shapes(path: str | Path) -> tuple[str, dict[str, tuple[int, ...]]]:
    """(format, {key: shape}) of a weights file, without reading its tensors.

    Raises CheckpointError for a missing file, a file that is neither safetensors nor a torch
    zip/pickle, a truncated one, or a pickle holding more than tensors.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file (a diffusers model is a folder with model_index.json)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    with path.open("rb") as handle:
        if handle.read(len(_LFS_POINTER)) == _LFS_POINTER:
            raise CheckpointError(f"{path}: a git-lfs pointer, not the weights: fetch the real file (`git lfs pull` "
                                  "in the repository it came from)")
    if path.suffix.lower() == ".safetensors":
        return "safetensors", _safetensors_shapes(path)
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        return "ckpt", _pickle_shapes(path)
    raise CheckpointError(f"{path}: not a checkpoint file: expected .safetensors or .ckpt, got {path.suffix or 'no suffix'!r}")


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import SafetensorError, safe_open

    try:
        # framework="numpy": only the header is parsed; no tensor is materialised, torch not needed.
        with safe_open(str(path), framework="numpy") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except SafetensorError as exc:
        detail = str(exc).removeprefix("Error while deserializing header: ")
        hint = ("it is cut short (an interrupted download or copy?)" if "not fully covered" in detail
                else "it is not a safetensors file")
        raise CheckpointError(f"{path}: not a valid safetensors file ({detail}): {hint}") from None


def _pickle_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    import torch

    def load(mmap: bool):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            data = load(mmap=zipfile.is_zipfile(path))  # mmap needs the zip format of torch >= 1.6
        except RuntimeError as exc:
            if "zip" not in str(exc).lower():
                raise
            data = load(mmap=False)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights only load failed" in first.lower() or "unsupported global" in str(exc).lower():
            raise CheckpointError(
                f"{path}: this pickled checkpoint holds Python objects besides tensors; it was opened with "
                "torch.load(weights_only=True), which never runs code from a pickle, and refused. Convert it to "
                ".safetensors with a tool you trust, or ask its author for a safetensors file") from None
        raise CheckpointError(f"{path}: not a readable .ckpt ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable .ckpt: it is not a torch checkpoint or it is cut short "
                              f"({first})") from None
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # Lightning / CompVis files nest the weights
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a checkpoint: it holds a {type(data).__name__}, not a dict of tensors")
    return {key: tuple(value.shape) for key, value in data.items() if hasattr(value, "shape")}


def _examples(keys, limit: int = 2) -> str:
    return ", ".join(repr(k) for k in sorted(keys)[:limit])


def describe_weights(shapes: dict[str, tuple[int, ...]]) -> str:
    """What a weights file without a whole SD checkpoint's keys is instead, as a clause (no file name)."""
    keys = list(shapes)
    if not keys:
        return "it holds no tensors"
    if any(marker in k for k in keys for marker in ("lora_down", "lora_up", ".lora_A.", ".lora_B.", ".lora.down.")):
        return (f"this is a LoRA file (keys such as {_examples(k for k in keys if 'lora' in k)}), not a base "
                "checkpoint: add it to a model with --lora NAME=PATH")
    if any(k.startswith(("control_model.", "controlnet_cond_embedding.", "input_hint_block.")) for k in keys):
        return (f"this is a ControlNet (keys such as {_examples(keys)}), not a base checkpoint: add it to a model "
                "with --controlnet KIND=PATH")
    vae_keys = [k for k in keys if k.removeprefix(VAE_PREFIX).startswith(("encoder.", "decoder.", "quant_conv.",
                                                                         "post_quant_conv."))]
    if vae_keys and len(vae_keys) == len(keys):
        return (f"this is a VAE (keys such as {_examples(vae_keys)}), not a base checkpoint: give it with --vae PATH "
                "next to --base")
    if any(k.startswith(("image_proj.", "ip_adapter.")) for k in keys):
        return "this is an IP-Adapter, not a base checkpoint: add it to a model with --ip-adapter PATH"
    if any(k in ("emb_params", "string_to_param", "clip_l", "clip_g") or k.startswith("string_to_param.") for k in keys):
        return "this is a textual-inversion embedding, not a base checkpoint (embeddings are not supported yet)"
    if any(k.startswith(("down_blocks.", "up_blocks.", "mid_block.")) for k in keys):
        return (f"this is a single diffusers component (keys such as {_examples(keys)}), not a whole checkpoint: "
                "give the diffusers model folder (the one with model_index.json) as --base")
    return f"unknown architecture: no Stable Diffusion UNet keys ({UNET_PREFIX}*); its keys look like {_examples(keys, 3)}"


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """The family and settings of a single-file SD checkpoint, or CheckpointError saying what it is instead."""
    path = Path(path).expanduser()
    fmt, shapes = read_shapes(path)
    unet_keys = [k for k in shapes if k.startswith(UNET_PREFIX)]
    if not unet_keys:
        raise CheckpointError(f"{path}: {describe_weights(shapes)}")
    if not any(k in shapes for k in _CROSS_ATTN_KEYS):
        raise UnknownArchitectureError(f"{path}: unknown architecture: it has a {UNET_PREFIX}* model but not the "
                              "Stable Diffusion 1.x / 2.x / XL UNet layout (no input-block cross-attention)")
    in_conv = shapes.get(_IN_CONV_KEY, ())
    if len(in_conv) == 4 and in_conv[1] != 4:
        kind = "an inpainting" if in_conv[1] == 9 else "an instruct-pix2pix or other" if in_conv[1] == 8 else "a"
        raise CheckpointError(f"{path}: {kind} checkpoint ({in_conv[1]} UNet input channels, not 4): only "
                              "text-to-image base architectures are supported")

    if any(k.startswith("conditioner.embedders.1.model.") for k in shapes):
        family, evidence = "sdxl", "a second OpenCLIP text encoder (conditioner.embedders.1): SD-XL base"
    elif any(k.startswith("conditioner.embedders.0.model.") for k in shapes):
        raise CheckpointError(f"{path}: an SD-XL refiner checkpoint (one OpenCLIP text encoder, no CLIP-L): only "
                              "base architectures are supported")
    else:
        width = next(shapes[k][-1] for k in _CROSS_ATTN_KEYS if k in shapes)
        if width == 768:
            family, evidence = "sd15", "UNet cross-attention 768 wide (CLIP ViT-L): SD-1.x"
        elif width == 1024:
            family, evidence = "sd21", "UNet cross-attention 1024 wide (OpenCLIP ViT-H): SD-2.x"
        else:
            raise UnknownArchitectureError(f"{path}: unknown architecture: UNet cross-attention is {width} wide "
                                  "(SD-1.x has 768, SD-2.x 1024, SD-XL 2048)")

    missing_text = [p for p in _TEXT_ENCODER_PREFIXES[family] if not any(k.startswith(p) for k in shapes)]
    if missing_text:
        raise CheckpointError(f"{path}: a {family} UNet without its text encoder ({', '.join(p + '*' for p in missing_text)}"
                              " missing): a UNet-only file cannot render; use the whole checkpoint")

    assumptions = []
    if "v_pred" in shapes:
        prediction = "v_prediction"
        evidence += "; a v_pred key: v-prediction"
    elif family == "sd21":
        prediction = "v_prediction"
        assumptions.append("v-prediction at 768 px assumed (SD-2.1 and SD-2.1-base have the same shapes); "
                           "for a -base fine-tune add --prediction-type epsilon --native-size 512")
    else:
        prediction = "epsilon"
    has_vae = any(k.startswith(VAE_PREFIX) for k in shapes)
    return CheckpointInfo(path=path, format=fmt, family=family, prediction_type=prediction,
                          native_size=NATIVE_SIZES[family], has_vae=has_vae, evidence=evidence,
                          assumptions=assumptions)


def inspect_vae(path: str | Path) -> str:
    """Check a VAE given as one file (standalone keys, or a whole checkpoint's `first_stage_model.*`).

    Returns the format. Raises CheckpointError naming the file when it holds no VAE decoder.
    """
    path = Path(path).expanduser()
    fmt, shapes = read_shapes(path)
    if not any(k.removeprefix(VAE_PREFIX).startswith("decoder.") for k in shapes):
        raise CheckpointError(f"{path}: not a VAE (no decoder.* keys): {describe_weights(shapes)}")
    return fmt


def inspect_component(path: str | Path, marker_prefixes: tuple[str, ...], what: str) -> str:
    """Check a ControlNet / IP-Adapter weights file has keys of its kind; returns the format."""
    path = Path(path).expanduser()
    fmt, shapes = read_shapes(path)
    if not any(k.startswith(marker_prefixes) for k in shapes):
        raise CheckpointError(f"{path}: not {what} (no {' / '.join(p + '*' for p in marker_prefixes)} keys): "
                              f"{describe_weights(shapes)}")
    return fmt


def config_folder(family: str) -> Path:
    """The component configs the project carries for `family` (diffusers layout, no weights).

    `from_single_file` needs a diffusers-layout config for every component; without one it would
    fetch the configs from the hub, which a render worker cannot reach.
    """
    folder = Path(__file__).resolve().parent / "configs" / family
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"no carried component configs for family {family!r} at {folder}")
    return folder


def folder_family(folder: str | Path) -> tuple[str, str]:
    """(family, evidence) of a diffusers model folder (or HF cache snapshot), from its configs.

    The pipeline class tells SD-XL; the UNet's cross-attention width tells SD-1.x (768) from SD-2.x
    (1024). Raises CheckpointError naming the folder when it is not a Stable Diffusion pipeline.
    """
    import json

    folder = Path(folder).expanduser()
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise CheckpointError(f"{folder}: not a diffusers model folder (no model_index.json)")
    try:
        pipeline = json.loads(index_file.read_text()).get("_class_name", "")
        unet = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: unreadable model config ({exc})") from None
    if unet.get("in_channels", 4) != 4:
        raise CheckpointError(f"{folder}: a UNet with {unet['in_channels']} input channels (inpainting or similar): "
                              "only text-to-image base architectures are supported")
    width = unet.get("cross_attention_dim")
    if pipeline.startswith("StableDiffusionXL") and width == 2048:
        return "sdxl", f"{pipeline} with a 2048-wide cross-attention: SD-XL base"
    if pipeline.startswith("StableDiffusion") and not pipeline.startswith("StableDiffusionXL"):
        if width == 768:
            return "sd15", f"{pipeline}, UNet cross-attention 768 wide: SD-1.x"
        if width == 1024:
            return "sd21", f"{pipeline}, UNet cross-attention 1024 wide: SD-2.x"
    raise UnknownArchitectureError(f"{folder}: unknown architecture: {pipeline or 'no pipeline class'} with a "
                          f"{width}-wide cross-attention is not SD-1.x, SD-2.x or SD-XL base")
