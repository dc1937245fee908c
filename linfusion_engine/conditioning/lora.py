"""LoRA adapters applied to the live weights, LinFusion's copies of attn1 included, with an exact undo.

Why not diffusers' `load_lora_weights`: it needs peft (not installed, and
`cross_attention_kwargs={"scale": ...}` crashes without it), and it wraps the *UNet's* Linear
layers. LinFusion's mounted processor holds its own to_q/to_k/to_v/to_out, so a LoRA wrapped
around the UNet's attn1 would be silently ignored while LinFusion runs. Here the delta
W += scale * (alpha / rank) * B @ A is added to the weights in place, and for every attn1
projection also to the matching LinFusion processor's copy, so the LoRA acts whichever attention
backend renders. The touched weights are saved first (on the CPU) and `LoraPatch.restore` copies
them back bit for bit.

File formats read (safetensors): diffusers/peft (`unet.<module>.lora_A.weight` / `lora_B.weight`),
older diffusers (`unet.<module>.lora.down.weight` / `lora.up.weight`) and kohya
(`lora_unet_<module with _>.lora_down.weight` / `lora_up.weight` / `.alpha`), for the UNet and
the text encoders (`text_encoder.`, `text_encoder_2.`, `lora_te_`, `lora_te1_`, `lora_te2_`).
A key that matches no layer is an error naming it: a LoRA for another base model must not
half-apply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from linfusion_engine.builtins import ensure_built
from linfusion_engine.loading import LORA_FILE
from linfusion_engine.registry import BUILTIN_PREFIX, resolve_location

# (prefix in diffusers keys, prefix in kohya keys, pipeline component)
_TARGETS = (("unet.", "lora_unet_", "unet"), ("text_encoder.", "lora_te1_", "text_encoder"),
            ("text_encoder.", "lora_te_", "text_encoder"), ("text_encoder_2.", "lora_te2_", "text_encoder_2"))
_PAIR_SUFFIXES = ((".lora_A.weight", ".lora_B.weight"), (".lora.down.weight", ".lora.up.weight"),
                  (".lora_down.weight", ".lora_up.weight"))
_ATTN1_PROJECTION = re.compile(r"^(?P<layer>.+\.attn1)\.(?P<proj>to_q|to_k|to_v|to_out\.0)$")


class LoraError(ValueError):
    """A LoRA file that cannot be applied: unreadable, unknown keys, or shapes that do not fit."""


@dataclass
class LoraLayer:
    """One adapted layer: `down` (r, in[, k, k]), `up` (out, r[, 1, 1]) and alpha (None: alpha = rank)."""

    component: str
    module: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    def delta(self, scale: float) -> torch.Tensor:
        """scale * (alpha / rank) * up @ down, in fp32, shaped like the layer's weight."""
        rank = self.down.shape[0]
        factor = scale * ((self.alpha / rank) if self.alpha is not None else 1.0)
        up = self.up.float().flatten(1)  # (out, r)
        down = self.down.float().flatten(1)  # (r, in * k * k)
        delta = up @ down  # (out, in * k * k)
        if self.down.ndim == 4:
            delta = delta.reshape(self.up.shape[0], *self.down.shape[1:])  # (out, in, k, k)
        return delta * factor


def read_lora(path: str | Path, pipeline) -> list[LoraLayer]:
    """The layers of a LoRA file, each resolved to a module of `pipeline` (LoraError otherwise)."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise LoraError(f"{path}: not a readable safetensors LoRA file: {exc}") from exc
    kohya_names = {component: _kohya_names(getattr(pipeline, component, None))
                   for _, _, component in _TARGETS}
    layers, used = [], set()
    for key in sorted(state):
        for down_suffix, up_suffix in _PAIR_SUFFIXES:
            if not key.endswith(down_suffix):
                continue
            stem = key[: -len(down_suffix)]
            up_key = stem + up_suffix
            if up_key not in state:
                raise LoraError(f"{path}: '{key}' has no matching '{up_key}'")
            component, module = _resolve(stem, kohya_names)
            if component is None:
                raise LoraError(f"{path}: '{stem}' names no layer of this {type(pipeline).__name__} "
                                "(a LoRA made for another base model?)")
            alpha = state.get(stem + ".alpha")
            layers.append(LoraLayer(component, module, state[key], state[up_key],
                                    float(alpha) if alpha is not None else None))
            used.update({key, up_key, stem + ".alpha"})
    unknown = sorted(set(state) - used)
    if unknown:
        raise LoraError(f"{path}: {len(unknown)} tensors are not LoRA down/up/alpha pairs, e.g. '{unknown[0]}'")
    if not layers:
        raise LoraError(f"{path}: no LoRA layers found")
    return layers


def _kohya_names(model: nn.Module | None) -> dict[str, str]:
    """kohya names (dots turned to underscores) -> module names, for the layers a LoRA can adapt."""
    if model is None:
        return {}
    return {name.replace(".", "_"): name for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d)) and ".processor." not in f".{name}."}


def _resolve(stem: str, kohya_names: dict[str, dict[str, str]]) -> tuple[str | None, str | None]:
    for diffusers_prefix, kohya_prefix, component in _TARGETS:
        if stem.startswith(diffusers_prefix):
            module = stem[len(diffusers_prefix):]
            return (component, module) if module in kohya_names[component].values() else (None, None)
        if stem.startswith(kohya_prefix):
            module = kohya_names[component].get(stem[len(kohya_prefix):])
            return (component, module) if module else (None, None)
    return None, None


@dataclass
class LoraPatch:
    """What `apply_loras` changed: the original weights, to put back with `restore`."""

    names: list[tuple[str, float]] = field(default_factory=list)
    _saved: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False)
    layers_patched: int = 0
    linfusion_patched: int = 0

    def restore(self) -> None:
        """Copy every saved weight back, exactly; the patch is empty afterwards."""
        with torch.no_grad():
            for live, saved in reversed(self._saved):
                live.copy_(saved.to(live.device))
        self._saved.clear()


def apply_loras(pipeline, loras: list[tuple[str, str | Path, float]], linfusion=None) -> LoraPatch:
    """Add each LoRA's delta to the pipeline's live weights (and LinFusion's attn1 copies); returns the undo.

    Args:
        pipeline: a loaded diffusers pipeline.
        loras: (name, safetensors file, scale) in order; deltas add up.
        linfusion: the engine's LinFusion model (mounted or not) or None.
    On an error nothing stays applied.
    """
    patch = LoraPatch()
    saved_ids: set[int] = set()
    linfusion_layers = dict(zip(linfusion.module_names, linfusion.processors)) if linfusion is not None else {}

    def add(weight: torch.Tensor, delta: torch.Tensor, where: str) -> None:
        if tuple(weight.shape) != tuple(delta.shape):
            raise LoraError(f"{where}: LoRA delta {tuple(delta.shape)} does not fit weight {tuple(weight.shape)}")
        if id(weight) not in saved_ids:
            saved_ids.add(id(weight))
            patch._saved.append((weight, weight.detach().to("cpu", copy=True)))
        weight.add_(delta.to(device=weight.device, dtype=weight.dtype))

    try:
        with torch.no_grad():
            for name, path, scale in loras:
                for layer in read_lora(path, pipeline):
                    module = getattr(pipeline, layer.component).get_submodule(layer.module)
                    where = f"LoRA {name!r}: {layer.component}.{layer.module}"
                    delta = layer.delta(scale)
                    add(module.weight, delta, where)
                    patch.layers_patched += 1
                    match = _ATTN1_PROJECTION.match(layer.module) if layer.component == "unet" else None
                    if match and match["layer"] in linfusion_layers:
                        processor = linfusion_layers[match["layer"]]
                        target = processor.to_out[0] if match["proj"] == "to_out.0" else getattr(processor, match["proj"])
                        add(target.weight, delta, f"{where} (LinFusion)")
                        patch.linfusion_patched += 1
                patch.names.append((name, scale))
    except BaseException:
        patch.restore()
        raise
    return patch


def lora_file(registry, entry, name: str) -> Path:
    """The safetensors file of LoRA `name` of registry `entry` (tiny built-in ones built on first use)."""
    location = registry.require_conditioning(entry, "lora", name)
    if not location.startswith(BUILTIN_PREFIX):
        return Path(location).expanduser()

    folder = ensure_built(location, resolve_location(location, registry.models_dir), registry.models_dir)
    return folder / LORA_FILE
