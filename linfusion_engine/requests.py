"""What a render asks for and what it gives back: `RenderRequest`, `RenderResult`, `choose_attention`.

Torch-free and engine-free: manifest validation checks requests (`check_inputs`) without paying
for torch, and the strategies (`linfusion_engine.strategies`) pick each stage's attention backend
with `choose_attention` without importing the engine that calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from linfusion_engine.capabilities import ATTENTION_MODES, STRATEGIES, TILE_AXES, side_problem
from linfusion_engine.conditioning.inputs import Conditioning, ControlInput, InitInput, LoraInput
from linfusion_engine.registry import ModelEntry
from linfusion_engine.schedulers import check_scheduler_name

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes up to an unsigned 64-bit value


@dataclass
class RenderRequest:
    """One text-to-image render.

    Args:
        prompt: what to draw.
        negative_prompt: what to steer away from; "" means none (SD-XL then uses zero embeddings,
            as it was trained to).
        seed: seeds a torch.Generator on the render device: same seed, same device, same image.
        width, height: output size in pixels, multiples of 8; None means the model's native size.
        steps: denoising steps.
        guidance: classifier-free guidance scale; <= 1 turns guidance off.
        scheduler: a name from `linfusion_engine.schedulers.SCHEDULER_NAMES`.
        attention: `linear` (LinFusion), `softmax` (the base model's own), or `auto`: softmax when
            both sides are at most the model's native size, linear above it.
        strategy: how the size is reached: `direct`, `sdedit`, `highres` (SD-XL) or `auto`
            (see `linfusion_engine.planner`).
        tileable: seamless output: True (both axes), "x", "y" or False.
        low_memory: the low-memory mode (`linfusion_engine.memory`): True, False, or None to turn
            it on only when the estimate says the render would not otherwise fit the device.
        controlnets: control maps (issue 6): `ControlInput`s or (type, PIL image, scale) tuples;
            `type` names one of the model's ControlNets (`ModelEntry.controlnets`).
        ip_adapter: reference images, an `IpAdapterInput` (PIL images and a scale), or None.
        init_image, strength, mask: start from this PIL image (image to image) changing it by
            `strength` in (0, 1]; with a PIL `mask`, only its white area is repainted (inpainting).
        loras: `LoraInput`s or (name, scale) tuples, names from the model's `loras`.
        controlnet_linear: ControlNets get LinFusion's linear self-attention whenever the UNet
            runs it (default); False leaves them softmax.
    """

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    width: int | None = None
    height: int | None = None
    steps: int = 30
    guidance: float = 7.5
    scheduler: str = "euler"
    attention: str = "auto"
    strategy: str = "auto"
    tileable: bool | str = False
    low_memory: bool | None = None
    # -- issue 6: conditioning (linfusion_engine.conditioning) --
    controlnets: list = field(default_factory=list)
    ip_adapter: Any = None
    init_image: Any = None
    strength: float = 0.5
    mask: Any = None
    loras: list = field(default_factory=list)
    controlnet_linear: bool = True

    def conditioning(self):
        """The request's conditioning as one `linfusion_engine.conditioning.inputs.Conditioning` (torch-free)."""
        controls = [c if isinstance(c, ControlInput) else ControlInput(*c) for c in self.controlnets]
        loras = [lora if isinstance(lora, LoraInput) else LoraInput(*lora) for lora in self.loras]
        init = None
        if self.init_image is not None:
            init = InitInput(self.init_image, self.strength, self.mask)
        elif self.mask is not None:
            raise ValueError("mask needs an init_image to repaint")
        return Conditioning(controlnets=controls, ip_adapter=self.ip_adapter, init=init, loras=loras)

    def check_inputs(self) -> None:
        """Raise a short ValueError naming the first invalid field. Needs no model and no torch."""
        if not isinstance(self.prompt, str):
            raise ValueError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if not isinstance(self.negative_prompt, str):
            raise ValueError(f"negative_prompt must be a string, got {type(self.negative_prompt).__name__}")
        for side in ("width", "height"):  # None: the model's native size
            value = getattr(self, side)
            problem = None if value is None else side_problem(side, value)
            if problem is not None:
                raise ValueError(problem)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer from 0 to 2**64-1, got {self.seed!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if not isinstance(self.guidance, (int, float)) or isinstance(self.guidance, bool) or self.guidance < 0:
            raise ValueError(f"guidance must be a number >= 0, got {self.guidance!r}")
        check_scheduler_name(self.scheduler)
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"unknown attention mode {self.attention!r}; use one of {', '.join(ATTENTION_MODES)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        if not (isinstance(self.tileable, bool) or self.tileable in TILE_AXES):
            raise ValueError(f"tileable must be true, false, 'x' or 'y', got {self.tileable!r}")
        if self.low_memory not in (None, True, False):
            raise ValueError(f"low_memory must be true, false or None (auto), got {self.low_memory!r}")
        self.conditioning().check()  # issue 6


@dataclass
class RenderResult:
    """A rendered image (PIL, RGB) and its JSON-serialisable metadata (see `Engine.render`)."""

    image: Any
    metadata: dict[str, Any]


def choose_attention(request: RenderRequest, width: int, height: int, entry: ModelEntry) -> str:
    """The backend a request renders with: `linear` or `softmax` (see RenderRequest.attention)."""
    has_linfusion = entry.linfusion != "none"
    if request.attention == "linear":
        if not has_linfusion:
            raise ValueError(f"attention 'linear': model {entry.name!r} has no LinFusion weights (linfusion: none)")
        return "linear"
    if request.attention == "softmax" or not has_linfusion:
        return "softmax"
    native = entry.native_size
    return "softmax" if width <= native and height <= native else "linear"
