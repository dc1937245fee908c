"""`sdedit`: the progressive SDEdit chain published for SD-1.5.

A text-to-image base at about the native area, then per doubling: decode, resize, re-encode and
re-noise to the stage's strength (0.4, 0.3, 0.2, 0.1), and denoise at the new size. The base
composes the picture; each later stage only adds the detail its size can carry, so content does
not repeat the way a direct render far above the native size does.
"""

from __future__ import annotations

from linfusion_engine.planner import RenderPlan
from linfusion_engine.strategies.base import StrategyContext


def run_sdedit(ctx: StrategyContext, plan: RenderPlan):
    base, *later = plan.stages
    latents = ctx.run(base)  # (1, 4, h0/8, w0/8)
    for stage in later:
        latents = ctx.run(stage, ctx.upscale(latents, stage))  # (1, 4, h/8, w/8)
    return ctx.to_pil(latents)
