"""LinFusion: the replaced self-attention layers of a UNet, as one model in the published format.

A LinFusion model is a list of `GeneralizedLinearAttnProcessor`s, one per self-attention (`attn1`)
layer of the UNet it belongs to, described by `config.json`'s `modules_list` (dim_n, heads,
module_name, projection_mid_dim per layer, in the order down blocks, up blocks, mid block). Its
state_dict keys are `{i}.to_q.weight` ... -- exactly the published checkpoints' keys, so the
published folders load and our saved folders load upstream.

Mounting sets the processors on the UNet's attn1 layers and remembers what was there, so
`LinFusion.unmount(unet)` restores the original attention bit for bit (upstream cannot unmount).
The mounted processors are this model's own modules, not copies: training the mounted UNet trains
this model, and `save_pretrained` saves what was trained.

Loading is strict: a missing, misnamed, unexpected or mis-shaped tensor is a
`LinFusionWeightsError` naming the layer and the key, never a silently random layer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from safetensors.torch import load_file, save_file
from torch import nn

from linfusion_engine.processor import GeneralizedLinearAttnProcessor
from linfusion_engine.registry import HUB_ID_RE, ModelNotAvailableError, cached_snapshot, how_to_provide

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
MODULE_KEYS = ("dim_n", "heads", "module_name", "projection_mid_dim")
# Where the original processors wait while LinFusion is mounted (an attribute of the UNet).
_ORIGINALS_ATTR = "_linfusion_original_processors"
# Published order of the replaced layers: down blocks, then up blocks, then the mid block.
_BLOCK_ORDER = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}
# SD-XL checkpoints use MLPs of width C / 16; SD-1.5/2.1 ones use C (stored as null).
SDXL_MID_DIM_DIVISOR = 16
_MAX_LISTED_PROBLEMS = 20


class LinFusionWeightsError(ValueError):
    """A LinFusion folder's config or tensors do not match (missing, misnamed, unexpected, mis-shaped)."""


class LinFusionLayoutError(ValueError):
    """A LinFusion model does not fit a UNet: different layers, channels or heads."""


class LinFusionMountError(RuntimeError):
    """Mounting on a UNet that already has LinFusion, or unmounting one that has none."""


def is_mounted(unet: nn.Module) -> bool:
    """True while LinFusion is mounted on this UNet (between `mount` and `unmount`)."""
    return getattr(unet, _ORIGINALS_ATTR, None) is not None


def self_attention_layers(unet: nn.Module) -> list[tuple[str, Attention]]:
    """The UNet's self-attention layers as (qualified name, Attention), in the published order.

    The published order is down blocks, up blocks, mid block, each in module order; the sort is
    explicit rather than relying on the order the UNet registers its blocks in.
    """
    layers = [(name, module) for name, module in unet.named_modules()
              if isinstance(module, Attention) and name.rsplit(".", 1)[-1] == "attn1"]
    return sorted(layers, key=lambda item: _BLOCK_ORDER.get(item[0].split(".", 1)[0], len(_BLOCK_ORDER)))


def _layer_channels(name: str, attn: Attention) -> int:
    """attn1's channel count C, checking the layer is a square C -> C self-attention."""
    dims = {attn.to_q.in_features, attn.to_q.out_features, attn.to_k.out_features, attn.to_v.out_features,
            attn.to_out[0].in_features, attn.to_out[0].out_features}
    if len(dims) != 1 or attn.is_cross_attention:
        raise LinFusionLayoutError(
            f"{name}: LinFusion needs a self-attention layer whose query, key, value and output all have the "
            f"same width; this one has to_q {attn.to_q.in_features}->{attn.to_q.out_features}, "
            f"to_out {attn.to_out[0].in_features}->{attn.to_out[0].out_features}")
    return dims.pop()


def _module_label(index: int, modules_list: list[dict]) -> str:
    if 0 <= index < len(modules_list):
        return f"module {index} ({modules_list[index]['module_name']})"
    return f"module {index} (beyond modules_list, which has {len(modules_list)} entries)"


def _key_index(key: str) -> int | None:
    match = re.match(r"^(\d+)\.", key)
    return int(match.group(1)) if match else None


def _problem_list(problems: list[str]) -> str:
    shown = problems[:_MAX_LISTED_PROBLEMS]
    more = len(problems) - len(shown)
    return "\n  - " + "\n  - ".join(shown) + (f"\n  ... and {more} more" if more else "")


class LinFusion(ModelMixin, ConfigMixin):
    """The generalized-linear-attention layers for one UNet, in the published LinFusion format.

    Args:
        modules_list: one dict per replaced layer, in the order down blocks, up blocks, mid block:
            `dim_n` (channels C), `heads`, `module_name` (the attn1 module's qualified name in the
            UNet) and `projection_mid_dim` (MLP width; null means C).
    """

    @register_to_config
    def __init__(self, modules_list: list[dict]) -> None:
        super().__init__()
        _check_modules_list(modules_list)
        for index, entry in enumerate(modules_list):
            # Children named "0", "1", ...: the state_dict keys are then the published `{i}.to_q.weight`.
            self.add_module(str(index), GeneralizedLinearAttnProcessor(
                entry["dim_n"], entry["heads"], entry.get("projection_mid_dim")))

    def to(self, *args, **kwargs) -> "LinFusion":
        """nn.Module.to. diffusers 0.42's ModelMixin.to warns "modules that should be kept in float32: []"
        on every dtype cast of any model; LinFusion has no such modules, nor offloading or quantization."""
        return nn.Module.to(self, *args, **kwargs)

    @property
    def processors(self) -> list[GeneralizedLinearAttnProcessor]:
        """The processors, in modules_list order."""
        return [self._modules[str(index)] for index in range(len(self.config.modules_list))]

    @property
    def module_names(self) -> list[str]:
        return [entry["module_name"] for entry in self.config.modules_list]

    # -- layout ---------------------------------------------------------------------------------
    @staticmethod
    def modules_list_for_unet(unet: nn.Module, projection_mid_dim: int | None = None) -> list[dict]:
        """The published modules_list for a UNet: one entry per attn1, down, up, then mid.

        Args:
            unet: any SD-1.x/2.x/XL UNet2DConditionModel (or fine-tune); the meta device is fine.
            projection_mid_dim: None follows the published checkpoints -- null (m = C) for
                SD-1.x/2.x, C // 16 for SD-XL (detected by addition_embed_type "text_time");
                an int sets that MLP width for every layer.
        """
        if projection_mid_dim is not None and projection_mid_dim < 1:
            raise ValueError(f"projection_mid_dim must be a positive int or None, got {projection_mid_dim}")
        layers = self_attention_layers(unet)
        if not layers:
            raise LinFusionLayoutError(f"{type(unet).__name__} has no self-attention (attn1) layers to replace")
        is_sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"
        modules_list = []
        for name, attn in layers:
            channels = _layer_channels(name, attn)
            if projection_mid_dim is not None:
                mid_dim = projection_mid_dim
            else:
                mid_dim = channels // SDXL_MID_DIM_DIVISOR if is_sdxl else None
            modules_list.append({"dim_n": channels, "heads": attn.heads, "module_name": name,
                                 "projection_mid_dim": mid_dim})
        return modules_list

    def check_layout(self, unet: nn.Module) -> list[tuple[str, Attention]]:
        """The UNet's attn1 layers matched to this model's entries, or LinFusionLayoutError."""
        layers = dict(self_attention_layers(unet))
        modules_list = self.config.modules_list
        problems = []
        for index, entry in enumerate(modules_list):
            attn = layers.get(entry["module_name"])
            if attn is None:
                problems.append(f"{_module_label(index, modules_list)}: the UNet has no self-attention layer of that name")
                continue
            channels = _layer_channels(entry["module_name"], attn)
            if channels != entry["dim_n"] or attn.heads != entry["heads"]:
                problems.append(f"{_module_label(index, modules_list)}: dim_n {entry['dim_n']}, heads {entry['heads']} "
                                f"but the UNet layer has {channels} channels, {attn.heads} heads")
        for name in sorted(set(layers) - set(self.module_names)):
            problems.append(f"UNet self-attention layer {name} has no entry in modules_list")
        if problems:
            raise LinFusionLayoutError(
                f"LinFusion layout ({len(modules_list)} layers) does not match this {type(unet).__name__} "
                f"({len(layers)} self-attention layers):" + _problem_list(problems))
        return [(entry["module_name"], layers[entry["module_name"]]) for entry in modules_list]

    # -- building ---------------------------------------------------------------------------------
    @classmethod
    def from_unet(cls, unet: nn.Module, projection_mid_dim: int | None = None, seed: int = 0) -> "LinFusion":
        """Untrained layers for any SD UNet: the UNet's own attn1 Q/K/V/out and identity MLPs.

        Each MLP's last Linear is zeroed, so x + MLP(x) = x and the mounted UNet starts out as
        linear attention with the original projections (upstream's first initialisation). The
        MLPs' first Linear and LayerNorm are default-initialised from `seed`, without touching
        the global RNG. The result is on the UNet's device, in its dtype.
        """
        modules_list = cls.modules_list_for_unet(unet, projection_mid_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(modules_list)
        layers = dict(self_attention_layers(unet))
        with torch.no_grad():
            for index, (entry, processor) in enumerate(zip(modules_list, model.processors)):
                attn = layers[entry["module_name"]]
                for name in ("to_q", "to_k", "to_v"):
                    if getattr(attn, name).bias is not None:
                        raise LinFusionLayoutError(
                            f"{entry['module_name']}.{name} has a bias; LinFusion's {name} has none")
                    getattr(processor, name).weight.copy_(getattr(attn, name).weight)
                processor.to_out[0].weight.copy_(attn.to_out[0].weight)
                if attn.to_out[0].bias is not None:
                    processor.to_out[0].bias.copy_(attn.to_out[0].bias)
                else:
                    processor.to_out[0].bias.zero_()
                for mlp in (processor.to_q_, processor.to_k_):
                    mlp[3].weight.zero_()
                    mlp[3].bias.zero_()
        return model.to(device=unet.device, dtype=unet.dtype)

    # -- mounting ---------------------------------------------------------------------------------
    def mount(self, unet: nn.Module) -> None:
        """Replace every attn1 processor of the UNet with this model's processors.

        Moves this model to the UNet's device and dtype (in place, like `.to()`): the UNet then
        shares these modules. Raises LinFusionMountError when LinFusion is already mounted and
        LinFusionLayoutError when the UNet's layers do not match modules_list.
        """
        if is_mounted(unet):
            raise LinFusionMountError("LinFusion is already mounted on this UNet; call LinFusion.unmount(unet) first")
        layers = self.check_layout(unet)
        self.to(device=unet.device, dtype=unet.dtype)
        originals = {name: attn.processor for name, attn in layers}
        for (name, attn), processor in zip(layers, self.processors):
            attn.set_processor(processor)
        setattr(unet, _ORIGINALS_ATTR, originals)

    @staticmethod
    def unmount(unet: nn.Module) -> None:
        """Put back the processors that were there before `mount`: the original attention, bit for bit.

        Works on the UNet alone, also after something else (e.g. `load_ip_adapter`) replaced the
        mounted processors.
        """
        originals = getattr(unet, _ORIGINALS_ATTR, None)
        if originals is None:
            raise LinFusionMountError("LinFusion is not mounted on this UNet; nothing to unmount")
        modules = dict(unet.named_modules())
        for name, processor in originals.items():
            modules[name].set_processor(processor)
        delattr(unet, _ORIGINALS_ATTR)

    # -- saving and loading -----------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write the published format: config.json (modules_list) and the safetensors weights.

        Args:
            save_directory: folder to write (created if needed).
            dtype: the tensors' dtype on disk; None keeps the model's (published files are fp16).
        """
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.save_config(folder)
        tensors = {key: value.detach().to(device="cpu", dtype=dtype or value.dtype).contiguous()
                   for key, value in self.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        return folder

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, subfolder: str | None = None,
                        torch_dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                        **kwargs: Any) -> "LinFusion":
        """Load a folder in the published format, strictly.

        Args:
            pretrained_model_name_or_path: a local folder, or an `owner/name` hub id looked up in
                the local Hugging Face cache only (nothing is downloaded).
            subfolder: a folder inside it that holds config.json and the weights.
            torch_dtype: the dtype to load into (published files are fp16); None means fp32.
            device: where the tensors go; None means the CPU.
        """
        if kwargs:
            raise TypeError(f"LinFusion.from_pretrained got unsupported arguments: {', '.join(sorted(kwargs))}")
        folder = _resolve_folder(str(pretrained_model_name_or_path))
        if subfolder:
            folder = folder / subfolder
        config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for path in (config_file, weights_file):
            if not path.is_file():
                raise LinFusionWeightsError(f"{folder}: no {path.name}; a LinFusion folder holds {CONFIG_NAME} "
                                            f"and {WEIGHTS_NAME}")
        config = _read_config(config_file)
        with torch.device("meta"):  # shapes only: every tensor comes from the file
            model = cls(config["modules_list"])
        state = load_file(str(weights_file))
        _check_state_dict(state, model, config["modules_list"], weights_file)
        dtype = torch_dtype or torch.float32
        state = {key: value.to(device=device or "cpu", dtype=dtype) for key, value in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()


def _check_modules_list(modules_list: Iterable[dict]) -> None:
    if not isinstance(modules_list, list) or not modules_list:
        raise LinFusionWeightsError("modules_list must be a non-empty list of layer entries")
    for index, entry in enumerate(modules_list):
        if not isinstance(entry, dict):
            raise LinFusionWeightsError(f"modules_list[{index}]: expected a mapping with keys {', '.join(MODULE_KEYS)}")
        missing = [key for key in ("dim_n", "heads", "module_name") if key not in entry]
        unknown = sorted(set(entry) - set(MODULE_KEYS))
        if missing or unknown:
            raise LinFusionWeightsError(
                f"modules_list[{index}] ({entry.get('module_name', '?')}): "
                + "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                          unknown and f"unknown {', '.join(unknown)}"])))
        dim_n, heads, mid = entry["dim_n"], entry["heads"], entry.get("projection_mid_dim")
        if not (isinstance(dim_n, int) and isinstance(heads, int) and dim_n > 0 and heads > 0 and dim_n % heads == 0):
            raise LinFusionWeightsError(f"modules_list[{index}] ({entry['module_name']}): heads ({heads}) must be a "
                                        f"positive divisor of dim_n ({dim_n})")
        if mid is not None and not (isinstance(mid, int) and mid > 0):
            raise LinFusionWeightsError(f"modules_list[{index}] ({entry['module_name']}): projection_mid_dim must be "
                                        f"null or a positive int, got {mid!r}")


def _resolve_folder(location: str) -> Path:
    path = Path(location).expanduser()
    if path.is_dir():
        return path
    if HUB_ID_RE.match(location) and not location.startswith(("/", "~", ".")):
        snapshot = cached_snapshot(location)
        if snapshot is not None:
            return snapshot
    raise ModelNotAvailableError(f"LinFusion weights: {how_to_provide(location)}")


def _read_config(config_file: Path) -> dict:
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise LinFusionWeightsError(f"{config_file}: not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise LinFusionWeightsError(f"{config_file}: expected a JSON object")
    if config.get("_class_name") != "LinFusion":
        raise LinFusionWeightsError(f"{config_file}: _class_name is {config.get('_class_name')!r}, not 'LinFusion'")
    if "modules_list" not in config:
        raise LinFusionWeightsError(f"{config_file}: no modules_list")
    try:
        _check_modules_list(config["modules_list"])
    except LinFusionWeightsError as exc:
        raise LinFusionWeightsError(f"{config_file}: {exc}") from None
    return config


def _check_state_dict(state: dict[str, torch.Tensor], model: LinFusion, modules_list: list[dict],
                      weights_file: Path) -> None:
    """Every expected tensor present with its shape, nothing else: else one error listing each problem."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    problems = []
    for key in expected:
        if key not in state:
            problems.append(f"{_module_label(_key_index(key), modules_list)}: missing tensor '{key}'")
        elif tuple(state[key].shape) != expected[key]:
            problems.append(f"{_module_label(_key_index(key), modules_list)}: tensor '{key}' has shape "
                            f"{tuple(state[key].shape)}, expected {expected[key]}")
        elif not state[key].is_floating_point():
            problems.append(f"{_module_label(_key_index(key), modules_list)}: tensor '{key}' is {state[key].dtype}, "
                            "expected a float dtype")
    for key in sorted(set(state) - set(expected)):
        index = _key_index(key)
        where = _module_label(index, modules_list) if index is not None else "not a layer key"
        problems.append(f"{where}: unexpected tensor '{key}'")
    if problems:
        raise LinFusionWeightsError(f"{weights_file}: the tensors do not match config.json's modules_list "
                                   f"({len(problems)} problems):" + _problem_list(problems))
