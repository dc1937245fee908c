"""One diffusion stage at one size: the building block every strategy is made of.

`run_stage` runs a single text-to-image pass (no `init_latents`) or image-to-image pass (with
`init_latents` at the stage's size and a `strength`) on the engine's loaded pipeline and returns
the stage's latents (scaled, as the UNet sees them). It never decodes: strategies decode, resize
and re-encode between stages themselves (`linfusion_engine.tiling`), so the VAE can be tiled and
wrapped. The UNet's convolutions wrap on `StageInputs.axes` for the stage (tileable output).

Extending a stage (conditioning, issue 6). Everything a pipeline call may take beyond the basics
goes through `StageInputs.pipeline_kwargs`, passed unchanged to the pipeline call: control images
already resized to the stage's size (`image=` of a ControlNet pipeline), `ip_adapter_image_embeds`,
`mask_image`, `callback_on_step_end`, ... A strategy gets them per stage from
`StrategyContext.stage_kwargs(stage)` (see `linfusion_engine.strategies.base`), so a control map
can follow the chain 64 -> 128 -> 256. A stage that needs another pipeline class (ControlNet,
inpainting) registers a factory in `PIPELINE_FACTORIES` under a new kind and names that kind in
`StageInputs.pipeline_kind`; all pipelines share the loaded modules (`from_pipe`), nothing reloads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from linfusion_engine.tiling import circular_convs


def _image_to_image(pipe):
    from diffusers import AutoPipelineForImage2Image

    return AutoPipelineForImage2Image.from_pipe(pipe)


# kind -> factory(text_to_image_pipeline) -> pipeline sharing its modules
PIPELINE_FACTORIES: dict[str, Callable[[Any], Any]] = {"img2img": _image_to_image}


class StagePipelines:
    """The loaded text-to-image pipeline and, built on first use, siblings sharing its modules."""

    def __init__(self, pipe) -> None:
        self.base = pipe
        self._built: dict[str, Any] = {"txt2img": pipe}

    def get(self, kind: str):
        if kind not in self._built:
            try:
                factory = PIPELINE_FACTORIES[kind]
            except KeyError:
                raise ValueError(f"run_stage: no pipeline of kind {kind!r}; known: txt2img, "
                                 f"{', '.join(PIPELINE_FACTORIES)}") from None
            sibling = factory(self.base)
            sibling.set_progress_bar_config(disable=True)
            self._built[kind] = sibling
        return self._built[kind]


@dataclass
class StageInputs:
    """What one stage needs.

    Args:
        prompt, negative_prompt, steps, guidance: as in RenderRequest.
        width, height: the stage's size in pixels.
        scheduler: a fresh scheduler instance (schedulers keep per-run state).
        generator: the render's seeded generator, shared along the chain.
        init_latents: (1, 4, height/8, width/8) scaled latents to re-noise; None = from noise.
        strength: fraction of the schedule to re-run for image-to-image.
        axes: wrapped axes for tileable output ("", "x", "y", "xy").
        pipeline_kind: which pipeline runs it; default txt2img or img2img from `init_latents`.
        pipeline_kwargs: extra keyword arguments for the pipeline call (the extension point).
    """

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: Any
    generator: torch.Generator
    init_latents: torch.Tensor | None = None
    strength: float | None = None
    axes: str = ""
    pipeline_kind: str | None = None
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.width % 8 or self.height % 8:
            raise ValueError(f"run_stage: {self.width}x{self.height} is not a multiple of 8")
        if self.init_latents is not None:
            if self.strength is None or not 0 < self.strength <= 1:
                raise ValueError(f"run_stage: image-to-image needs a strength in (0, 1], got {self.strength!r}")
            expected = (self.height // 8, self.width // 8)
            if tuple(self.init_latents.shape[-2:]) != expected:
                raise ValueError(f"run_stage: init_latents are {tuple(self.init_latents.shape[-2:])}, "
                                 f"expected {expected} for {self.width}x{self.height}")


def img2img_steps(steps: int, strength: float) -> int:
    """Scheduler steps for an image-to-image stage: `steps`, raised so that at least one step runs.

    diffusers runs int(steps x strength) steps; at 4 steps and strength 0.1 that is none (an error).
    """
    return max(steps, math.ceil(1 / strength))


def run_stage(pipelines: StagePipelines, inputs: StageInputs) -> torch.Tensor:
    """Run one stage; returns its scaled latents (1, 4, height/8, width/8). See the module docstring."""
    inputs.check()
    kind = inputs.pipeline_kind or ("txt2img" if inputs.init_latents is None else "img2img")
    pipe = pipelines.get(kind)
    pipe.scheduler = inputs.scheduler
    call: dict[str, Any] = {
        "prompt": inputs.prompt,
        "negative_prompt": inputs.negative_prompt or None,
        "guidance_scale": float(inputs.guidance),
        "generator": inputs.generator,
        "output_type": "latent",
    }
    if inputs.init_latents is None:
        call.update(width=inputs.width, height=inputs.height, num_inference_steps=inputs.steps)
    else:
        call.update(image=inputs.init_latents.to(pipe.unet.dtype), strength=float(inputs.strength),
                    num_inference_steps=img2img_steps(inputs.steps, inputs.strength))
    call.update(inputs.pipeline_kwargs)
    with circular_convs([pipe.unet], inputs.axes):
        output = pipe(**call)
    return output.images  # (1, 4, height/8, width/8): output_type="latent" returns the latents
