"""What every strategy shares: the render's context, and the decode-resize-encode between stages."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from linfusion_engine import tiling
from linfusion_engine.planner import Stage
from linfusion_engine.strategies.stage import StageInputs, StagePipelines, img2img_steps, run_stage


@dataclass
class StrategyContext:
    """One render's fixed inputs, shared by its stages.

    Args:
        pipelines: the engine's loaded pipeline and its siblings.
        new_scheduler: a fresh scheduler per stage (scheduler state must not leak between stages).
        generator: the render's seeded generator: the whole chain is reproducible from the seed.
        axes: wrapped axes for tileable output ("", "x", "y", "xy").
        vae_tile_px: size -> tile size in pixels for the VAE at that size, or None for one pass.
        use_attention: sets the self-attention backend for a stage's size; returns its name.
        stage_kwargs: extra pipeline keyword arguments per stage (conditioning; see stage.py).
        records: one dict per stage run, for the render's metadata.
    """

    pipelines: StagePipelines
    prompt: str
    negative_prompt: str
    steps: int
    guidance: float
    new_scheduler: Callable[[], Any]
    generator: torch.Generator
    axes: str = ""
    vae_tile_px: Callable[[int, int], int | None] = lambda width, height: None
    use_attention: Callable[[int, int], str] = lambda width, height: "unchanged"
    stage_kwargs: Callable[[Stage], dict] | None = None
    records: list[dict] = field(default_factory=list)

    @property
    def vae(self):
        return self.pipelines.base.vae

    def inputs(self, stage: Stage, init_latents: torch.Tensor | None = None, **pipeline_kwargs) -> StageInputs:
        extra = dict(self.stage_kwargs(stage)) if self.stage_kwargs else {}
        extra.update(pipeline_kwargs)
        return StageInputs(prompt=self.prompt, negative_prompt=self.negative_prompt, width=stage.width,
                           height=stage.height, steps=self.steps, guidance=self.guidance,
                           scheduler=self.new_scheduler(), generator=self.generator,
                           init_latents=init_latents, strength=stage.strength, axes=self.axes,
                           pipeline_kwargs=extra)

    def run(self, stage: Stage, init_latents: torch.Tensor | None = None, **pipeline_kwargs) -> torch.Tensor:
        """Run `stage` through `run_stage` and record it."""
        started = time.perf_counter()
        attention = self.use_attention(stage.width, stage.height)
        inputs = self.inputs(stage, init_latents, **pipeline_kwargs)
        latents = run_stage(self.pipelines, inputs)
        # What ran, not what was planned: a conditioned context may start the first stage from an
        # init image (a paintover, or a re-render's source) at its own strength.
        strength = inputs.strength if inputs.init_latents is not None else stage.strength
        kind = "img2img" if inputs.init_latents is not None and stage.kind == "txt2img" else stage.kind
        record = {"kind": kind, "width": stage.width, "height": stage.height, "strength": strength,
                  "scheduler_steps": self.steps if strength is None else img2img_steps(self.steps, strength),
                  "attention": attention, "seconds": round(time.perf_counter() - started, 4)}
        if stage.dilation is not None:
            record["dilation"] = stage.dilation
        self.records.append(record)
        return latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> image (1, 3, H, W) in [-1, 1], tiled from the size that needs it."""
        height, width = latents.shape[-2] * 8, latents.shape[-1] * 8
        return tiling.decode(self.vae, latents, self.axes, self.vae_tile_px(width, height))

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        return tiling.encode(self.vae, image, self.axes, self.vae_tile_px(width, height))

    def upscale(self, latents: torch.Tensor, stage: Stage) -> torch.Tensor:
        """The previous stage's latents at `stage`'s size: decode, resize in pixels, re-encode.

        The resize happens on pixels, as published: resizing latents directly blurs them into
        values the VAE never produced.
        """
        image = self.decode(latents)  # (1, 3, H, W)
        image = tiling.resize(image, stage.width, stage.height, self.axes).clamp(-1, 1)  # (1, 3, h', w')
        return self.encode(image)  # (1, 4, h'/8, w'/8)

    def to_pil(self, latents: torch.Tensor):
        """Final latents -> an RGB PIL image."""
        from PIL import Image

        image = self.decode(latents)[0]  # (3, H, W) in [-1, 1]
        array = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
        return Image.fromarray(array, mode="RGB")
