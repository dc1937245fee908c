"""ControlNets from the model registry, with LinFusion's linear attention in their own self-attention.

A ControlNet is a trainable copy of the UNet's encoder (down blocks and mid block) whose
residuals are added to the UNet's. Upstream LinFusion replaces only the UNet's self-attention,
so with a ControlNet attached a 16K render still pays softmax attention's quadratic cost in the
ControlNet's attn1 layers: half the self-attention of the encoder, at the largest token counts.

Here each ControlNet attn1 gets a `GeneralizedLinearAttnProcessor` whose Q/K/V/out are the
ControlNet's *own* attn1 projections (they were fine-tuned with the ControlNet) and whose two
MLPs are the matching LinFusion layer's (trained to make linear attention mimic softmax on
these very features; the ControlNet mirrors the UNet's down and mid blocks, so layers match by
module name). The MLP modules are shared with the UNet's LinFusion, not copied: no extra memory,
and LoRA deltas never touch them. `unmount_linear` puts the ControlNet's softmax processors back.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from linfusion_engine.builtins import ensure_built
from linfusion_engine.checkpoints import config_folder
from linfusion_engine.loading import dtype_kwarg, hub_offline, quiet_progress_bars
from linfusion_engine.processor import GeneralizedLinearAttnProcessor
from linfusion_engine.registry import BUILTIN_PREFIX

# Where a ControlNet's softmax processors wait while linear attention is mounted on it.
_ORIGINALS_ATTR = "_linfusion_controlnet_original_processors"


class ControlNetLayoutError(ValueError):
    """A ControlNet self-attention layer has no matching LinFusion layer in the UNet."""


def load_controlnet(registry, entry, kind: str, *, device, dtype):
    """The ControlNet of control type `kind` for registry `entry`, on `device` in `dtype`.

    Tiny (`builtin:`) ones are built on first use; others come from a local folder, a single file
    (original `control_model.*` or diffusers keys, read against the family's carried ControlNet
    config) or the local Hugging Face cache (never downloaded). Raises ValueError when the entry has no ControlNet of
    that type, ModelNotAvailableError when its files are not here.
    """
    from diffusers import ControlNetModel

    location = registry.require_conditioning(entry, "controlnet", kind)
    folder = Path(registry.conditioning_path(location))
    if location.startswith(BUILTIN_PREFIX):
        ensure_built(location, folder, registry.models_dir)
    with hub_offline(), quiet_progress_bars():
        # Loaded straight into the render dtype: a later `.to(dtype)` makes diffusers warn.
        if folder.is_file():
            controlnet = ControlNetModel.from_single_file(
                str(folder), config=str(config_folder(entry.family)), subfolder="controlnet", local_files_only=True,
                **{dtype_kwarg(): dtype})
        else:
            controlnet = ControlNetModel.from_pretrained(folder, local_files_only=True, **{dtype_kwarg(): dtype})
    return controlnet.to(device=device).eval()


def controlnet_self_attention(controlnet: nn.Module) -> list[tuple[str, nn.Module]]:
    """The ControlNet's attn1 layers as (qualified name, Attention), in module order."""
    from diffusers.models.attention_processor import Attention

    return [(name, module) for name, module in controlnet.named_modules()
            if isinstance(module, Attention) and name.rsplit(".", 1)[-1] == "attn1"]


def is_linear(controlnet: nn.Module) -> bool:
    """True while linear attention is mounted on this ControlNet."""
    return getattr(controlnet, _ORIGINALS_ATTR, None) is not None


def linear_processors(controlnet: nn.Module, linfusion) -> dict[str, GeneralizedLinearAttnProcessor]:
    """New processors for the ControlNet's attn1 layers: its own Q/K/V/out, LinFusion's MLPs (shared).

    Raises ControlNetLayoutError naming the layer when LinFusion has no layer of the same name
    and shape (a ControlNet made for another base model).
    """
    by_name = dict(zip(linfusion.module_names, linfusion.processors))
    processors = {}
    for name, attn in controlnet_self_attention(controlnet):
        source = by_name.get(name)
        channels = attn.to_q.in_features
        if source is None or source.dim_n != channels or source.heads != attn.heads:
            found = "none" if source is None else f"{source.dim_n} channels, {source.heads} heads"
            raise ControlNetLayoutError(
                f"ControlNet layer {name} ({channels} channels, {attn.heads} heads) has no matching LinFusion "
                f"layer in the UNet (found: {found}); is the ControlNet made for this base model?")
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            processor = GeneralizedLinearAttnProcessor(channels, attn.heads, source.projection_mid_dim)
        processor.to_q = _copy_linear(attn.to_q)
        processor.to_k = _copy_linear(attn.to_k)
        processor.to_v = _copy_linear(attn.to_v)
        processor.to_out = nn.ModuleList([_copy_linear(attn.to_out[0])])
        if processor.to_out[0].bias is None:
            raise ControlNetLayoutError(f"ControlNet layer {name}.to_out.0 has no bias; LinFusion's has one")
        processor.to_q_, processor.to_k_ = source.to_q_, source.to_k_  # shared with the UNet's LinFusion
        processors[name] = processor
    return processors


def _copy_linear(linear: nn.Linear) -> nn.Linear:
    """An independent copy (same device and dtype): LoRA deltas on the UNet must not reach it, nor back."""
    copy = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                     device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        copy.weight.copy_(linear.weight)
        if linear.bias is not None:
            copy.bias.copy_(linear.bias)
    return copy


def mount_linear(controlnet: nn.Module, processors: dict[str, GeneralizedLinearAttnProcessor]) -> None:
    """Set the linear processors on the ControlNet's attn1 layers, remembering the softmax ones."""
    if is_linear(controlnet):
        return
    layers = dict(controlnet_self_attention(controlnet))
    originals = {name: layers[name].processor for name in processors}
    for name, processor in processors.items():
        layers[name].set_processor(processor)
    setattr(controlnet, _ORIGINALS_ATTR, originals)


def unmount_linear(controlnet: nn.Module) -> None:
    """Put the ControlNet's own softmax processors back (no-op when it is softmax already)."""
    originals = getattr(controlnet, _ORIGINALS_ATTR, None)
    if originals is None:
        return
    layers = dict(controlnet_self_attention(controlnet))
    for name, processor in originals.items():
        layers[name].set_processor(processor)
    delattr(controlnet, _ORIGINALS_ATTR)


class ControlNetBank:
    """The ControlNets an engine has loaded, one per control type, each loaded once.

    `attention` decides the ControlNets' self-attention per render: linear when the UNet runs
    linear and `linear_controlnet` is on (the default), softmax otherwise (the switch).
    """

    def __init__(self, registry, entry, *, device, dtype) -> None:
        self.registry, self.entry, self.device, self.dtype = registry, entry, device, dtype
        self._models: dict[str, nn.Module] = {}
        self._linear: dict[str, dict[str, GeneralizedLinearAttnProcessor]] = {}

    def get(self, kind: str) -> nn.Module:
        if kind not in self._models:
            self._models[kind] = load_controlnet(self.registry, self.entry, kind, device=self.device, dtype=self.dtype)
        return self._models[kind]

    def set_attention(self, kind: str, linear: bool, linfusion) -> str:
        """Mount (or unmount) linear attention on ControlNet `kind`; returns the backend it now runs."""
        controlnet = self.get(kind)
        if not linear or linfusion is None:
            unmount_linear(controlnet)
            return "softmax"
        if kind not in self._linear:
            self._linear[kind] = linear_processors(controlnet, linfusion)
        mount_linear(controlnet, self._linear[kind])
        return "linear"
