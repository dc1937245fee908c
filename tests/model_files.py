"""Full-size Stable Diffusion model files with random weights, for tests of model import.

Why this exists: `linstudio models add NAME --base FILE` takes single-file checkpoints in the
ORIGINAL layout (CompVis / LDM / SGM, as A1111 and ComfyUI users download them) and loads them
with diffusers' `from_single_file(path, config=<carried folder>, local_files_only=True)`. No real
weights can be downloaded here, so the tests build the real thing with random values: the real
architectures (from the component configs the project carries in
`linfusion_engine/configs/<family>/`), the real key names and tensor shapes, the real file formats
(safetensors, a torch-zip `.ckpt`, a Hugging Face cache snapshot, the published LinFusion folder)
and the bad files people actually end up with (a git-lfs pointer, a half download, a LoRA, a bare
VAE, an old pickled `.ckpt`, another architecture).

How the weights are made: each tensor gets its own generator, seeded from (seed, family,
component, tensor name), and is drawn directly in the requested dtype. So any one tensor can be
rebuilt on its own (`random_tensors`) without building the model — the SD-XL test compares 3.5 B
parameters without holding a second copy. (An fp16 build is therefore not the fp32 build rounded:
the same seed gives other values per dtype.) Values are uniform with standard deviation 0.02 (uniform: drawing it is ~5x faster than
a normal on the CPU); norm weights are 1 + that noise, and biases get the noise too rather than
zeros, so that a mapping that swapped two biases or two norms would not go unnoticed. These
values keep a 2-step 256 px SD-1.5 render finite in fp32 (checked by the tests).

Nothing here is copied from diffusers' or anyone's conversion scripts: the key mapping below is
written from the facts of the two layouts (see `original_state_dict`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "linfusion_engine" / "configs"
FAMILIES = ("sd15", "sd21", "sdxl")
# The weight std: small enough that activations stay in range through ~100 layers, large
# enough that every tensor is distinguishable from every other.
WEIGHT_STD = 0.02
_UNIFORM_HALF_WIDTH = WEIGHT_STD * math.sqrt(3.0)  # U(-a, a) has std a / sqrt(3)
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)

# Original-layout prefixes of each component, per family.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
_TEXT_PREFIXES = {
    ("sd15", "text_encoder"): "cond_stage_model.transformer.",  # HF CLIP keys under it
    ("sd21", "text_encoder"): "cond_stage_model.model.",  # OpenCLIP keys under it
    ("sdxl", "text_encoder"): "conditioner.embedders.0.transformer.",  # HF CLIP-L keys under it
    ("sdxl", "text_encoder_2"): "conditioner.embedders.1.model.",  # OpenCLIP bigG keys under it
}
# SD-2.1's OpenCLIP ViT-H text tower has 24 blocks; diffusers' config keeps 23 (SD-2 conditions
# on the penultimate layer), so a real file carries one block the loader must drop.
SD21_OPENCLIP_BLOCKS = 24
OPENCLIP_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature, stored in real files


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")


def component_names(family: str) -> tuple[str, ...]:
    """The weight-carrying components of a family's pipeline (what a single file holds)."""
    _check_family(family)
    names = ("unet", "vae", "text_encoder")
    return names + ("text_encoder_2",) if family == "sdxl" else names


def _component_class(family: str, component: str) -> type:
    """The component's class as the carried model_index.json names it (library, class)."""
    index = json.loads((CONFIGS / family / "model_index.json").read_text())
    library, class_name = index[component]
    return getattr(importlib.import_module(library), class_name)


def meta_component(family: str, component: str) -> nn.Module:
    """The component built from `configs/<family>/<component>/config.json` on the meta device.

    Shapes only, no memory and ~0.3 s even for SD-XL's UNet: the base for filling in tensors,
    and enough for anything that only reads the architecture (LinFusion layouts).
    """
    _check_family(family)
    cls = _component_class(family, component)
    folder = CONFIGS / family / component
    if hasattr(cls, "config_class"):  # transformers: a PretrainedConfig subclass
        config = cls.config_class.from_pretrained(folder)
        with torch.device("meta"):
            return cls(config)
    with torch.device("meta"):  # diffusers: ConfigMixin
        return cls.from_config(cls.load_config(folder))


def _tensor_seed(seed: int, family: str, component: str, name: str) -> int:
    """A per-tensor seed, so each tensor can be rebuilt alone and in any order."""
    digest = hashlib.sha256(f"{seed}/{family}/{component}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _random_tensor(shape: tuple[int, ...], *, is_norm_weight: bool, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """One tensor: U(-a, a) with std WEIGHT_STD (1 + that for norm weights), drawn in `dtype` itself
    (casting fp32 to fp16 costs more than the draw on this CPU)."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.empty(shape, dtype=dtype).uniform_(-_UNIFORM_HALF_WIDTH, _UNIFORM_HALF_WIDTH, generator=generator)
    if is_norm_weight:
        values += 1.0
    return values


def _parameter_specs(module: nn.Module) -> Iterator[tuple[str, tuple[int, ...], bool]]:
    """(state_dict name, shape, is a norm's weight) for every parameter, in module order."""
    for module_name, child in module.named_modules():
        for param_name, param in child.named_parameters(recurse=False):
            name = f"{module_name}.{param_name}" if module_name else param_name
            yield name, tuple(param.shape), isinstance(child, _NORM_TYPES) and param_name == "weight"


def random_tensors(family: str, component: str, *, seed: int = 0,
                   dtype: torch.dtype = torch.float16) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors `random_components` puts into `component`, one at a time, without the model.

    For comparing a loaded model against the source when holding both would not fit in memory
    (SD-XL: 7 GB per copy in fp16).
    """
    for name, shape, is_norm_weight in _parameter_specs(meta_component(family, component)):
        yield name, _random_tensor(shape, is_norm_weight=is_norm_weight,
                                   seed=_tensor_seed(seed, family, component, name), dtype=dtype)


def random_component(family: str, component: str, *, seed: int = 0,
                     dtype: torch.dtype = torch.float16) -> nn.Module:
    """One component with the deterministic random weights (see the module docstring), in eval mode.

    Built on the meta device and filled tensor by tensor: default init of SD-XL's 3.5 B parameters
    takes minutes on two cores, this takes seconds, and never holds more than one extra tensor.
    """
    module = meta_component(family, component)
    owners = dict(module.named_modules())
    for name, tensor in random_tensors(family, component, seed=seed, dtype=dtype):
        owner_name, _, param_name = name.rpartition(".")
        owners[owner_name].register_parameter(param_name, nn.Parameter(tensor))
    # Non-persistent buffers are not weights (no file carries them): rebuild them as init would.
    for owner_name, owner in owners.items():
        for buffer_name, buffer in list(owner.named_buffers(recurse=False)):
            if not buffer.is_meta:
                continue
            if buffer_name == "position_ids":  # CLIP text embeddings: shape (1, max_position_embeddings)
                owner.register_buffer(buffer_name, torch.arange(buffer.shape[-1]).expand(buffer.shape).clone(),
                                      persistent=False)
            else:
                raise RuntimeError(f"{family} {component}: no rule to build buffer {owner_name}.{buffer_name}")
    return module.eval()


def random_components(family: str, *, seed: int = 0, dtype: torch.dtype = torch.float16) -> dict[str, nn.Module]:
    """The family's weight-carrying modules (unet, vae, text_encoder[, text_encoder_2]) with the
    deterministic random weights, built from the carried configs.

    Same seed and dtype, same values on every call. Sizes: SD-1.5
    1.07 B parameters, SD-2.1 1.29 B, SD-XL 3.47 B (2 bytes each in fp16).
    """
    return {name: random_component(family, name, seed=seed, dtype=dtype) for name in component_names(family)}


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc's malloc_trim).

    After a full-size pipeline is freed, glibc keeps gigabytes of it mapped for reuse (2-3 GB
    measured after an SD-2.1 fp32 load): RSS then stays high and the next big test starts from
    there on a machine shared with others. A no-op where there is no glibc.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# --- diffusers names -> original names ------------------------------------------------------------

_UNET_RESNET_PARTS = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                      "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP_LEVEL = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                   "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
                   "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _unet_resnet(rest: list[str]) -> str:
    return ".".join([_UNET_RESNET_PARTS[rest[0]], *rest[1:]])


def _unet_original_name(name: str, unet: nn.Module) -> str:
    """One UNet2DConditionModel key in LDM's openaimodel layout (without the model prefix).

    LDM numbers its blocks flat: input_blocks.0 is conv_in, then each down block contributes
    layers_per_block (resnet [, transformer]) entries and, except the last, one downsampler entry;
    output_blocks has layers_per_block + 1 entries per up block, the upsampler sitting in the last
    entry of each up block after its resnet (.1) or after its transformer (.2). The middle block is
    resnet, transformer, resnet (.0, .1, .2).
    """
    per_down = unet.config.layers_per_block + 1
    per_up = unet.config.layers_per_block + 1
    parts = name.split(".")
    for diffusers_prefix, ldm_prefix in _UNET_TOP_LEVEL.items():
        if name.startswith(diffusers_prefix + "."):
            return ldm_prefix + name[len(diffusers_prefix):]
    if parts[0] == "down_blocks":
        block, kind = int(parts[1]), parts[2]
        if kind == "resnets":
            return f"input_blocks.{1 + block * per_down + int(parts[3])}.0." + _unet_resnet(parts[4:])
        if kind == "attentions":
            return f"input_blocks.{1 + block * per_down + int(parts[3])}.1." + ".".join(parts[4:])
        if kind == "downsamplers" and parts[3:5] == ["0", "conv"]:
            return f"input_blocks.{1 + block * per_down + per_down - 1}.0.op." + ".".join(parts[5:])
    if parts[0] == "mid_block":
        index, kind = int(parts[2]), parts[1]
        if kind == "resnets":
            return f"middle_block.{2 * index}." + _unet_resnet(parts[3:])
        if kind == "attentions":
            return f"middle_block.{2 * index + 1}." + ".".join(parts[3:])
    if parts[0] == "up_blocks":
        block, kind = int(parts[1]), parts[2]
        if kind == "resnets":
            return f"output_blocks.{block * per_up + int(parts[3])}.0." + _unet_resnet(parts[4:])
        if kind == "attentions":
            return f"output_blocks.{block * per_up + int(parts[3])}.1." + ".".join(parts[4:])
        if kind == "upsamplers" and parts[3:5] == ["0", "conv"]:
            slot = 2 if hasattr(unet.up_blocks[block], "attentions") else 1
            return f"output_blocks.{block * per_up + per_up - 1}.{slot}.conv." + ".".join(parts[5:])
    raise KeyError(f"no original-layout name for UNet key {name}")


_VAE_RESNET_PARTS = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                     "conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_TOP_LEVEL = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}


def _vae_original_name(name: str, vae: nn.Module) -> str:
    """One AutoencoderKL key in LDM's VAE layout (without the first_stage_model prefix).

    LDM's decoder numbers its up blocks from the lowest resolution's *last* (up.3 runs first):
    diffusers' decoder.up_blocks.i is up.{n-1-i}. Mid blocks are block_1, attn_1, block_2.
    """
    parts = name.split(".")
    side = parts[0]
    if side in ("quant_conv", "post_quant_conv"):
        return name
    rest = parts[1:]
    if ".".join(rest[:1]) in _VAE_TOP_LEVEL:
        return ".".join([side, _VAE_TOP_LEVEL[rest[0]], *rest[1:]])
    if rest[0] == "mid_block":
        kind, index = rest[1], int(rest[2])
        if kind == "resnets":
            return ".".join([side, "mid", f"block_{index + 1}", _VAE_RESNET_PARTS[rest[3]], *rest[4:]])
        if kind == "attentions" and index == 0:
            inner = ".".join(rest[3:-1])
            return ".".join([side, "mid", "attn_1", _VAE_ATTENTION_PARTS[inner], rest[-1]])
    if rest[0] in ("down_blocks", "up_blocks"):
        index = int(rest[1])
        if rest[0] == "down_blocks":
            ldm_block, sampler = f"down.{index}", "downsample"
        else:
            ldm_block, sampler = f"up.{len(vae.decoder.up_blocks) - 1 - index}", "upsample"
        if rest[2] == "resnets":
            return ".".join([side, ldm_block, "block", rest[3], _VAE_RESNET_PARTS[rest[4]], *rest[5:]])
        if rest[2] in ("downsamplers", "upsamplers") and rest[3:5] == ["0", "conv"]:
            return ".".join([side, ldm_block, sampler, "conv", *rest[5:]])
    raise KeyError(f"no original-layout name for VAE key {name}")


def vae_original_state_dict(vae: nn.Module, prefix: str = VAE_PREFIX) -> dict[str, torch.Tensor]:
    """The VAE in LDM's layout; its mid-block attention projections as 1x1 conv weights, as LDM stores them."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in vae.state_dict().items():
        original = _vae_original_name(name, vae)
        if ".mid.attn_1." in original and original.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)  # (out, in) -> (out, in, 1, 1): nn.Conv2d(k=1)
        out[prefix + original] = tensor
    return out


def unet_original_state_dict(unet: nn.Module, prefix: str = UNET_PREFIX) -> dict[str, torch.Tensor]:
    """The UNet in LDM's openaimodel layout (SD-XL's add_embedding as label_emb)."""
    return {prefix + _unet_original_name(name, unet): tensor for name, tensor in unet.state_dict().items()}


def _hf_clip_keys(text_encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The CLIP text model's tensors under `text_model.` as transformers 4 and the files name them
    (transformers >= 5.6 dropped the `text_model.` level from CLIPTextModel)."""
    state = text_encoder.state_dict()
    if any(key.startswith("text_model.") for key in state):
        return {key: value for key, value in state.items() if key.startswith("text_model.")}
    return {"text_model." + key: value for key, value in state.items()}


def hf_clip_original_state_dict(text_encoder: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """An HF CLIP text encoder as SD-1.x / SD-XL files carry it: HF keys under `prefix`, plus the
    `embeddings.position_ids` buffer real files have (int64, (1, 77)) that loaders must ignore."""
    out = {prefix + key: value for key, value in _hf_clip_keys(text_encoder).items()}
    positions = text_encoder.config.max_position_embeddings
    out[prefix + "text_model.embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)  # (P,) -> (1, P)
    return out


def _openclip_block(layer: dict[str, torch.Tensor], block_prefix: str) -> dict[str, torch.Tensor]:
    """One OpenCLIP residual block from one HF CLIPEncoderLayer's tensors (keys relative to the layer)."""
    out = {}
    for kind in ("weight", "bias"):
        # q, k, v: 3 x (W, W) -> (3W, W) weights, 3 x (W,) -> (3W,) biases, in that order (nn.MultiheadAttention)
        out[f"{block_prefix}attn.in_proj_{kind}"] = torch.cat(
            [layer[f"self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")], dim=0)
        out[f"{block_prefix}attn.out_proj.{kind}"] = layer[f"self_attn.out_proj.{kind}"]
        out[f"{block_prefix}ln_1.{kind}"] = layer[f"layer_norm1.{kind}"]
        out[f"{block_prefix}ln_2.{kind}"] = layer[f"layer_norm2.{kind}"]
        out[f"{block_prefix}mlp.c_fc.{kind}"] = layer[f"mlp.fc1.{kind}"]
        out[f"{block_prefix}mlp.c_proj.{kind}"] = layer[f"mlp.fc2.{kind}"]
    return out


def _extra_openclip_layer(family: str, component: str, index: int, width: int, mlp: int, seed: int,
                          dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A random HF-named encoder layer the diffusers model does not have (SD-2.1's 24th block)."""
    shapes = {"self_attn.q_proj.weight": (width, width), "self_attn.k_proj.weight": (width, width),
              "self_attn.v_proj.weight": (width, width), "self_attn.out_proj.weight": (width, width),
              "layer_norm1.weight": (width,), "layer_norm2.weight": (width,),
              "mlp.fc1.weight": (mlp, width), "mlp.fc2.weight": (width, mlp)}
    shapes.update({key.replace(".weight", ".bias"): (shape[0],) for key, shape in list(shapes.items())})
    return {key: _random_tensor(shape, is_norm_weight=key.startswith("layer_norm") and key.endswith("weight"),
                                seed=_tensor_seed(seed, family, component, f"encoder.layers.{index}.{key}"),
                                dtype=dtype)
            for key, shape in shapes.items()}


def openclip_original_state_dict(text_encoder: nn.Module, prefix: str, *, family: str, component: str,
                                 extra_blocks: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """An HF CLIP text encoder in OpenCLIP's layout, as SD-2.x (`cond_stage_model.model.`) and SD-XL
    (`conditioner.embedders.1.model.`) files carry it.

    OpenCLIP keeps `text_projection` as a bare (width, embed_dim) matrix applied as `x @ P`, the
    transpose of an nn.Linear weight: diffusers' converter transposes it back into
    `text_projection.weight`. SD-2.x's diffusers model has no projection; the file has a random
    (width, width) one, which the converter also reads to learn the width it splits in_proj by.
    `extra_blocks` random blocks are appended after the model's own (SD-2.1: one).
    """
    clip = _hf_clip_keys(text_encoder)
    config = text_encoder.config
    dtype = clip["text_model.embeddings.token_embedding.weight"].dtype
    out = {prefix + "token_embedding.weight": clip["text_model.embeddings.token_embedding.weight"],
           prefix + "positional_embedding": clip["text_model.embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": clip["text_model.final_layer_norm.weight"],
           prefix + "ln_final.bias": clip["text_model.final_layer_norm.bias"],
           prefix + "logit_scale": torch.tensor(OPENCLIP_LOGIT_SCALE, dtype=dtype)}
    for index in range(config.num_hidden_layers):
        layer_prefix = f"text_model.encoder.layers.{index}."
        layer = {key[len(layer_prefix):]: value for key, value in clip.items() if key.startswith(layer_prefix)}
        out.update(_openclip_block(layer, f"{prefix}transformer.resblocks.{index}."))
    for index in range(config.num_hidden_layers, config.num_hidden_layers + extra_blocks):
        layer = _extra_openclip_layer(family, component, index, config.hidden_size, config.intermediate_size,
                                      seed, dtype)
        out.update(_openclip_block(layer, f"{prefix}transformer.resblocks.{index}."))
    projection = getattr(text_encoder, "text_projection", None)
    if projection is not None:
        out[prefix + "text_projection"] = projection.weight.T.contiguous()  # Linear (embed, width) -> (width, embed)
    else:
        out[prefix + "text_projection"] = _random_tensor(  # (width, width): ViT-H's embed_dim is its width
            (config.hidden_size, config.hidden_size), is_norm_weight=False,
            seed=_tensor_seed(seed, family, component, "text_projection"), dtype=dtype)
    return out


def _ldm_schedule_buffers(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The DDPM buffers LDM's LatentDiffusion registers (SD-1.x/2.x files carry them), for the
    scaled_linear 0.00085..0.012 schedule over 1000 steps. Loaders must ignore them."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])  # (1,) + (999,) -> (1000,)
    posterior_variance = betas * (1.0 - previous) / (1.0 - alphas_cumprod)
    buffers = {
        "betas": betas, "alphas_cumprod": alphas_cumprod, "alphas_cumprod_prev": previous,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(), "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": torch.log(torch.clamp(posterior_variance, min=1e-20)),
        "posterior_mean_coef1": betas * previous.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - previous) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
    }
    return {key: value.to(dtype) for key, value in buffers.items()}


def original_state_dict(components: dict[str, nn.Module], family: str, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """All of `components` under their original single-file names, plus the extras real files carry.

    - UNet: `model.diffusion_model.` + LDM openaimodel names (input_blocks / middle_block /
      output_blocks / time_embed / out; SD-XL's add_embedding as label_emb.0).
    - VAE: `first_stage_model.` + LDM names (encoder.down.N.block.M, mid.attn_1 with q/k/v/proj_out
      as (out, in, 1, 1) conv weights, nin_shortcut, quant_conv, post_quant_conv, ...).
    - Text: SD-1.5 `cond_stage_model.transformer.text_model.*`; SD-2.1 OpenCLIP
      `cond_stage_model.model.*` with a 24th random block; SD-XL `conditioner.embedders.0.transformer.
      text_model.*` (CLIP-L) and `conditioner.embedders.1.model.*` (OpenCLIP bigG, 32 blocks).
    - Extras a loader must ignore: CLIP's position_ids, OpenCLIP's logit_scale, and for SD-1.x/2.x
      LDM's 1000-step DDPM schedule buffers; SD-1.5 also `model_ema.decay` / `model_ema.num_updates`.

    Tensors are shared with the components where the layout allows (no copies); the exceptions are
    OpenCLIP's concatenated in_proj and transposed text_projection. `seed` only drives the tensors
    the components do not have (SD-2.1's extra block and text projection).
    """
    _check_family(family)
    dtype = components["unet"].dtype
    state: dict[str, torch.Tensor] = {}

    def add(part: dict[str, torch.Tensor]) -> None:
        clash = state.keys() & part.keys()
        if clash:
            raise KeyError(f"two tensors map to the same original name: {sorted(clash)[:3]}")
        state.update(part)

    add(unet_original_state_dict(components["unet"]))
    add(vae_original_state_dict(components["vae"]))
    if family == "sd15":
        add(hf_clip_original_state_dict(components["text_encoder"], _TEXT_PREFIXES[(family, "text_encoder")]))
    elif family == "sd21":
        add(openclip_original_state_dict(components["text_encoder"], _TEXT_PREFIXES[(family, "text_encoder")],
                                         family=family, component="text_encoder",
                                         extra_blocks=SD21_OPENCLIP_BLOCKS - components["text_encoder"].config.num_hidden_layers,
                                         seed=seed))
    else:
        add(hf_clip_original_state_dict(components["text_encoder"], _TEXT_PREFIXES[(family, "text_encoder")]))
        add(openclip_original_state_dict(components["text_encoder_2"], _TEXT_PREFIXES[(family, "text_encoder_2")],
                                         family=family, component="text_encoder_2", seed=seed))
    if family in ("sd15", "sd21"):
        add(_ldm_schedule_buffers(dtype))
    if family == "sd15":
        add({"model_ema.decay": torch.tensor(0.9999, dtype=torch.float32),
             "model_ema.num_updates": torch.tensor(0, dtype=torch.int32)})
    return state


# --- files ------------------------------------------------------------------------------------------

def write_single_file(path: str | Path, family: str, *, dtype: torch.dtype = torch.float16,
                      fmt: str = "safetensors", seed: int = 0,
                      components: dict[str, nn.Module] | None = None) -> Path:
    """Write a whole original-layout checkpoint of `family`, as A1111 / ComfyUI users have them.

    Args:
        path: the file to write (its suffix is not changed).
        fmt: "safetensors" (metadata {"format": "pt"}) or "ckpt" (`torch.save({"state_dict": sd})`,
            torch's zip format, loadable with `torch.load(weights_only=True)`).
        components: already built `random_components(family, seed=seed, dtype=dtype)` to reuse;
            None builds them (and frees them on return).

    Returns the path. The weights are `random_components(family, seed=seed, dtype=dtype)` — rebuild
    them (or stream them with `random_tensors`) to compare with what a loader produced. fp16 sizes:
    SD-1.5 2.1 GB, SD-2.1 2.6 GB, SD-XL 6.9 GB.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if fmt not in ("safetensors", "ckpt"):
        raise ValueError(f"fmt must be 'safetensors' or 'ckpt', got {fmt!r}")
    if components is None:
        components = random_components(family, seed=seed, dtype=dtype)
    state = original_state_dict(components, family, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        save_file(state, str(path), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": state}, path)
    return path


def tokenizer(cache_dir: str | Path | None = None, *, pad_token: str | None = None):
    """A CLIP tokenizer for the pipelines: the real one (`linfusion_engine.tokenizers`) where its
    vocabulary is installed, else the byte-level tiny one (its ids are valid for the real encoders)."""
    try:
        from linfusion_engine.tokenizers import clip_tokenizer
    except ImportError:
        clip_tokenizer = None
    if clip_tokenizer is not None:
        try:
            kwargs = {"pad_token": pad_token} if pad_token else {}
            return clip_tokenizer(cache_dir, **kwargs)
        except FileNotFoundError:  # ClipVocabularyMissing: open-clip-torch not installed
            pass
    from linfusion_devkit.tiny import tiny_tokenizer

    return tiny_tokenizer()


def _git_blob_sha1(path: Path) -> str:
    """The id git (and so the hub, for non-LFS files) gives a file's content."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_hf_cache_snapshot(hub_cache: str | Path, repo_id: str, family: str, *, seed: int = 0,
                            dtype: torch.dtype = torch.float16,
                            components: dict[str, nn.Module] | None = None) -> Path:
    """A diffusers model repo of `family` laid out in `hub_cache` exactly as huggingface_hub caches it.

    `models--owner--name/blobs/<id>` holds each file once (id: the sha256 for weight files, which
    the hub serves through LFS, the git blob sha1 for the rest), `snapshots/<40-hex commit>/...`
    mirrors the repo with relative symlinks into ../../blobs, and `refs/main` holds the commit.
    The repo: model_index.json (safety_checker / feature_extractor null), unet/, vae/,
    text_encoder/ [text_encoder_2/], tokenizer/ [tokenizer_2/], scheduler/, from the carried
    configs and `random_components(family, seed=seed, dtype=dtype)` (or `components`).

    Returns the snapshot folder.
    """
    _check_family(family)
    hub_cache = Path(hub_cache)
    repo_dir = hub_cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"{repo_id}/{family}/{seed}/{dtype}".encode()).hexdigest()
    if components is None:
        components = random_components(family, seed=seed, dtype=dtype)
    repo_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=repo_dir))
    try:
        shutil.copy(CONFIGS / family / "model_index.json", staging / "model_index.json")
        (staging / "scheduler").mkdir()
        shutil.copy(CONFIGS / family / "scheduler" / "scheduler_config.json", staging / "scheduler")
        for name, module in components.items():
            module.save_pretrained(staging / name)
        tokenizer_names = ("tokenizer", "tokenizer_2") if family == "sdxl" else ("tokenizer",)
        for name in tokenizer_names:
            tokenizer(pad_token="!" if (family, name) in (("sd21", "tokenizer"), ("sdxl", "tokenizer_2"))
                      else None).save_pretrained(staging / name)
        blobs, snapshot = repo_dir / "blobs", repo_dir / "snapshots" / commit
        blobs.mkdir(exist_ok=True)
        for file in sorted(p for p in staging.rglob("*") if p.is_file()):
            relative = file.relative_to(staging)
            blob_id = _sha256(file) if file.suffix in (".safetensors", ".bin") else _git_blob_sha1(file)
            blob = blobs / blob_id
            if blob.exists():
                file.unlink()
            else:
                os.replace(file, blob)
            link = snapshot / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)  # no newline, like huggingface_hub
    return snapshot


# --- published LinFusion ----------------------------------------------------------------------------

_LINFUSION_ORDER = ("down_blocks", "up_blocks", "mid_block")
# 17 tensors per layer (linfusion.md section 2): Q/K/V/out, then the two MLPs
# Linear(C, m) -> LayerNorm(m) -> LeakyReLU -> Linear(m, C), whose parameters sit at 0, 1 and 3.


def _linfusion_tensor_shapes(channels: int, mid: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"to_q.weight": (channels, channels), "to_k.weight": (channels, channels),
                                          "to_v.weight": (channels, channels),
                                          "to_out.0.weight": (channels, channels), "to_out.0.bias": (channels,)}
    for mlp in ("to_q_", "to_k_"):
        shapes.update({f"{mlp}.0.weight": (mid, channels), f"{mlp}.0.bias": (mid,),
                       f"{mlp}.1.weight": (mid,), f"{mlp}.1.bias": (mid,),
                       f"{mlp}.3.weight": (channels, mid), f"{mlp}.3.bias": (channels,)})
    return shapes


def linfusion_modules_list(unet: nn.Module) -> list[dict]:
    """The published modules_list for a UNet (a real or meta-device UNet2DConditionModel):
    one entry per transformer block's `attn1`, down blocks first, then up blocks, then the mid
    block; `projection_mid_dim` null for SD-1.x/2.x, C / 16 for SD-XL (the text_time UNet)."""
    is_sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"
    layers = [(name, module) for name, module in unet.named_modules() if name.endswith(".attn1")]
    layers.sort(key=lambda item: _LINFUSION_ORDER.index(item[0].split(".")[0]))  # stable: module order inside
    entries = []
    for name, attn in layers:
        channels = attn.to_q.in_features
        entries.append({"dim_n": channels, "heads": attn.heads, "module_name": name,
                        "projection_mid_dim": channels // 16 if is_sdxl else None})
    return entries


def write_published_linfusion(folder: str | Path, family_or_unet: str | nn.Module, *, seed: int = 0) -> Path:
    """LinFusion weights for a UNet in the published layout (Yuanshi/LinFusion-*), random values.

    config.json `{"_class_name": "LinFusion", "_diffusers_version": "0.30.0", "modules_list": [...]}`
    and `diffusion_pytorch_model.safetensors` in fp16 with `{i}.to_q.weight` ... (17 per entry).
    Built from linfusion.md's description, not from the product's loader, so a test of the loader
    checks it against the format rather than against itself. `family_or_unet`: a family name (its
    carried UNet config, read on the meta device) or a UNet. SD-1.5: 16 layers, 198 MB.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if isinstance(family_or_unet, str):
        unet, tag = meta_component(family_or_unet, "unet"), family_or_unet
    else:
        unet, tag = family_or_unet, "unet"
    modules_list = linfusion_modules_list(unet)
    tensors = {}
    for index, entry in enumerate(modules_list):
        mid = entry["projection_mid_dim"] or entry["dim_n"]
        for key, shape in _linfusion_tensor_shapes(entry["dim_n"], mid).items():
            tensors[f"{index}.{key}"] = _random_tensor(
                shape, is_norm_weight=key.endswith(".1.weight"),  # to_q_.1 / to_k_.1: the LayerNorms
                seed=_tensor_seed(seed, tag, "linfusion", f"{index}.{key}"), dtype=torch.float16)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "LinFusion", "_diffusers_version": "0.30.0", "modules_list": modules_list}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    return folder


# --- bad files, for refusal tests -------------------------------------------------------------------

GIT_LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
                   "oid sha256:6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa\n"
                   "size 4265146304\n")


def write_text_as_checkpoint(folder: str | Path, name: str = "model.safetensors", text: str = GIT_LFS_POINTER) -> Path:
    """A text file with a checkpoint's name: by default the git-lfs pointer a clone without LFS leaves."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_truncated_checkpoint(folder: str | Path, name: str = "truncated.safetensors") -> Path:
    """A real (small, SD-shaped) safetensors file cut in half, like an interrupted download."""
    from safetensors.torch import save_file

    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    vae = random_component("sd15", "vae", dtype=torch.float16)
    state = {key: value for key, value in vae_original_state_dict(vae).items() if ".down.0." in key}
    save_file(state, str(path), metadata={"format": "pt"})
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size // 2)
    return path


def write_lora_file(folder: str | Path, name: str = "style_lora.safetensors", *, rank: int = 4, seed: int = 0) -> Path:
    """A small kohya-ss style SD-1.5 LoRA: `lora_unet_..._attn1_to_q.lora_down.weight` (rank, in),
    `.lora_up.weight` (out, rank), `.alpha`, and `lora_te_...` for the text encoder, with the ss_
    metadata kohya writes. Not a base model: `models add --base` must refuse it."""
    from safetensors.torch import save_file

    modules = {  # kohya module name -> (in, out) of the layer it adapts, SD-1.5 shapes
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (320, 320),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k": (320, 320),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v": (320, 320),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0": (320, 320),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (768, 320),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q": (1280, 1280),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
        "lora_te_text_model_encoder_layers_0_mlp_fc1": (768, 3072),
    }
    tensors = {}
    for module, (fan_in, fan_out) in modules.items():
        for key, shape in ((f"{module}.lora_down.weight", (rank, fan_in)), (f"{module}.lora_up.weight", (fan_out, rank))):
            tensors[key] = _random_tensor(shape, is_norm_weight=False, seed=_tensor_seed(seed, "sd15", "lora", key),
                                          dtype=torch.float16)
        tensors[f"{module}.alpha"] = torch.tensor(float(rank), dtype=torch.float16)
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                                            "ss_network_alpha": str(rank), "ss_base_model_version": "sd_v1"})
    return path


def write_vae_file(folder: str | Path, name: str = "vae-ft-mse.safetensors", *, family: str = "sd15",
                   dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """A standalone full-size VAE as people download one (LDM keys `encoder.conv_in.weight`,
    `decoder.up.0...`, `quant_conv...`, no `first_stage_model.` prefix; 83.7 M parameters)."""
    from safetensors.torch import save_file

    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    vae = random_component(family, "vae", seed=seed, dtype=dtype)
    save_file(vae_original_state_dict(vae, prefix=""), str(path), metadata={"format": "pt"})
    return path


class TrainingCallbackState:
    """Stands for the non-tensor objects old training `.ckpt` files pickle (Lightning callbacks,
    argparse namespaces): `torch.load(weights_only=True)` refuses any such global."""

    def __init__(self, monitor: str = "val/loss", best_score: float = 0.123) -> None:
        self.monitor = monitor
        self.best_score = best_score


def write_pickled_ckpt(folder: str | Path, name: str = "old-training.ckpt") -> Path:
    """A `.ckpt` whose pickle holds, beside a small state_dict, an object of a class that
    `torch.load(weights_only=True)` refuses (an UnpicklingError naming `model_files.TrainingCallbackState`)."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {UNET_PREFIX + "input_blocks.0.0.weight": _random_tensor((320, 4, 3, 3), is_norm_weight=False,
                                                                    seed=1, dtype=torch.float16),
             UNET_PREFIX + "input_blocks.0.0.bias": torch.zeros(320, dtype=torch.float16)}
    torch.save({"state_dict": state, "global_step": 470000,
                "callbacks": {"ModelCheckpoint": TrainingCallbackState()}}, path)
    return path


def write_unknown_architecture(folder: str | Path, name: str = "flux-like.safetensors", *, width: int = 64) -> Path:
    """A small file with FLUX-like keys (double_blocks / single_blocks / img_in ...): a real
    safetensors checkpoint of an architecture that is not Stable Diffusion."""
    from safetensors.torch import save_file

    shapes = {
        "img_in.weight": (width, 64), "img_in.bias": (width,), "txt_in.weight": (width, 128), "txt_in.bias": (width,),
        "time_in.in_layer.weight": (width, 256), "time_in.out_layer.weight": (width, width),
        "double_blocks.0.img_attn.norm.key_norm.scale": (width // 4,),
        "double_blocks.0.img_attn.norm.query_norm.scale": (width // 4,),
        "double_blocks.0.img_attn.qkv.weight": (3 * width, width), "double_blocks.0.img_attn.proj.weight": (width, width),
        "double_blocks.0.txt_attn.qkv.weight": (3 * width, width), "double_blocks.0.img_mod.lin.weight": (6 * width, width),
        "single_blocks.0.linear1.weight": (7 * width, width), "single_blocks.0.linear2.weight": (width, 5 * width),
        "single_blocks.0.norm.key_norm.scale": (width // 4,),
        "final_layer.linear.weight": (64, width), "final_layer.adaLN_modulation.1.weight": (2 * width, width),
    }
    tensors = {key: _random_tensor(shape, is_norm_weight=key.endswith(".scale"),
                                   seed=_tensor_seed(0, "flux", "unknown", key), dtype=torch.bfloat16)
               for key, shape in shapes.items()}
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path
