"""A strategy context that conditions every stage of a chain: control maps, references, init image, mask.

The strategies (`linfusion_engine.strategies`) run a chain of stages through
`StrategyContext.inputs` / `run`; `ConditionedContext` overrides `inputs` so that each stage,
whatever the strategy, gets:

- ControlNets: the request's ControlNets on a ControlNet pipeline kind, the control maps resized
  to *this* stage's size, their scales, and the ControlNets' self-attention set to the backend
  the UNet runs at this size (linear when LinFusion is mounted, unless switched off);
- IP-Adapter: the reference images' embeddings, computed once per render;
- init image: the chain's first stage starts from the init image (resized to the stage's size)
  at the request's strength, instead of from noise; later stages start from the previous stage
  as usual;
- mask (inpainting): after every step, the kept (black) area of the latents is reset to the
  init image's latents noised to the next step (the classic 4-channel inpainting blend, run as a
  step callback so it works on every pipeline kind and with tiled VAEs); each later stage uses
  the init image at its own size for the kept area, not the upscaled previous stage, so the kept
  area does not drift along the chain; and the final image gets the init image's pixels pasted
  back in the kept area (the VAE round trip alone is not exact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from linfusion_engine.conditioning.inputs import Conditioning, resized
from linfusion_engine.conditioning.pipelines import CONTROLNET_KINDS, use_controlnets
from linfusion_engine.planner import Stage
from linfusion_engine.schedulers import noised
from linfusion_engine.strategies.base import StrategyContext
from linfusion_engine.strategies.stage import StageInputs
from linfusion_engine.tiling import circular_convs


def pil_to_tensor(image, device, dtype=torch.float32) -> torch.Tensor:
    """RGB PIL image -> (1, 3, H, W) in [-1, 1]."""
    import numpy as np

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1)[None].to(device=device, dtype=dtype)  # (1, 3, H, W)


def latent_mask(mask_image, width: int, height: int, device) -> torch.Tensor:
    """(1, 1, height/8, width/8): 1 where any pixel of the 8x8 block is repainted, else 0."""
    import numpy as np

    pixels = np.asarray(resized(mask_image, width, height, mask=True), dtype=np.float32) / 255.0  # (H, W)
    tensor = torch.from_numpy(pixels)[None, None].to(device)  # (1, 1, H, W)
    return F.adaptive_max_pool2d(tensor, (height // 8, width // 8))  # (1, 1, H/8, W/8)


def masked_blend_callback(keep_latents: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor,
                          previous: Callable | None = None):
    """A `callback_on_step_end` that pins the kept area to `keep_latents` noised to the next step.

    `previous` (e.g. the highres skip residual) runs first; the mask has the last word. After the
    final step the kept area is `keep_latents` exactly.
    """
    def callback(pipe, index, timestep, callback_kwargs):
        if previous is not None:
            callback_kwargs = previous(pipe, index, timestep, callback_kwargs)
        latents = callback_kwargs["latents"]  # (1, 4, h, w)
        timesteps = pipe.scheduler.timesteps
        position = (timesteps == timestep).nonzero()
        last = not len(position) or int(position[-1]) + 1 >= len(timesteps)
        if last:
            keep = keep_latents
        else:
            keep = noised(pipe.scheduler, keep_latents, noise, timesteps[int(position[-1]) + 1])
        m = mask.to(latents.dtype)  # (1, 1, h, w), broadcast over channels
        callback_kwargs["latents"] = m * latents + (1 - m) * keep.to(latents.dtype)
        return callback_kwargs

    return callback


@dataclass
class ConditionedContext(StrategyContext):
    """StrategyContext plus the request's conditioning (see the module docstring).

    Args (beyond StrategyContext's):
        conditioning: the request's inputs.
        controlnets: the loaded ControlNet models, one per `conditioning.controlnets` entry.
        set_controlnet_attention: (controlnet index, unet backend, stage width, stage height) -> the
            backend the ControlNet now runs.
        ip_adapter_embeds: precomputed `ip_adapter_image_embeds`, or None.
        stage_records: per stage, what conditioning it got (for the metadata).
    """

    conditioning: Conditioning = field(default_factory=Conditioning)
    controlnets: list = field(default_factory=list)
    set_controlnet_attention: Callable[[int, str, int, int], str] | None = None
    ip_adapter_embeds: list | None = None
    unet_backend: Callable[[], str] = lambda: "softmax"
    stage_records: list[dict] = field(default_factory=list)

    def inputs(self, stage: Stage, init_latents: torch.Tensor | None = None, **pipeline_kwargs) -> StageInputs:
        inputs = super().inputs(stage, init_latents, **pipeline_kwargs)
        cond, width, height = self.conditioning, stage.width, stage.height
        record: dict[str, Any] = {"width": width, "height": height}
        device = self.generator.device
        init = cond.init
        first = inputs.init_latents is None
        if init is not None and first:
            # 1. The chain starts from the init image at this stage's size, not from noise.
            inputs.init_latents = self.encode(pil_to_tensor(resized(init.image, width, height), device))
            inputs.strength = float(init.strength)
            record["from_init_image"] = True
            record["strength"] = inputs.strength
        image_to_image = inputs.init_latents is not None
        kwargs = inputs.pipeline_kwargs

        # 2. ControlNets: maps at this stage's size, ControlNet attention following the UNet's.
        if cond.controlnets:
            kind = CONTROLNET_KINDS["img2img" if image_to_image else "txt2img"]
            use_controlnets(self.pipelines.get(kind), self.controlnets)
            maps = [resized(control.image, width, height) for control in cond.controlnets]
            kwargs["control_image" if image_to_image else "image"] = maps
            kwargs["controlnet_conditioning_scale"] = [float(control.scale) for control in cond.controlnets]
            if image_to_image:
                kwargs.update(width=width, height=height)
            inputs.pipeline_kind = kind
            backend = self.unet_backend()
            record["controlnet_attention"] = [self.set_controlnet_attention(i, backend, width, height)
                                              if self.set_controlnet_attention
                                              else "softmax" for i in range(len(self.controlnets))]

        # 3. IP-Adapter: the same embeddings at every stage.
        if self.ip_adapter_embeds is not None:
            kwargs["ip_adapter_image_embeds"] = self.ip_adapter_embeds

        # 4. Mask: pin the kept area to the init image at this stage's size.
        if init is not None and init.mask is not None and image_to_image:
            if first:
                keep = inputs.init_latents
            else:
                keep = self.encode(pil_to_tensor(resized(init.image, width, height), device))  # (1, 4, h, w)
            mask = latent_mask(init.mask, width, height, keep.device)  # (1, 1, h, w)
            noise = torch.randn(keep.shape, generator=self.generator, device=self.generator.device,
                                dtype=torch.float32).to(keep.device, keep.dtype)
            kwargs["callback_on_step_end"] = masked_blend_callback(keep, mask, noise, kwargs.get("callback_on_step_end"))
            kwargs["callback_on_step_end_tensor_inputs"] = ["latents"]
            record["masked"] = True
        self.stage_records.append(record)
        return inputs

    def run(self, stage: Stage, init_latents: torch.Tensor | None = None, **pipeline_kwargs) -> torch.Tensor:
        """StrategyContext.run, with the ControlNets' convolutions wrapping too for tileable output
        (the stage runner wraps the UNet's only): a control map must not bring the seam back."""
        if not (self.controlnets and self.axes):
            return super().run(stage, init_latents, **pipeline_kwargs)
        unique = list({id(model): model for model in self.controlnets}.values())
        with circular_convs(unique, self.axes):
            return super().run(stage, init_latents, **pipeline_kwargs)

    def to_pil(self, latents: torch.Tensor):
        """The final image; with a mask, the init image's own pixels pasted back where the mask is black."""
        from PIL import Image

        image = super().to_pil(latents)
        init = self.conditioning.init
        if init is None or init.mask is None:
            return image
        size = image.size
        return Image.composite(image, resized(init.image, *size), resized(init.mask, *size, mask=True))
