"""`direct`: one text-to-image pass at the target size, with LinFusion's linear attention.

Linear attention keeps memory linear in the token count, so any multiple of 8 runs; above about
twice the native area content starts to repeat, which is what `sdedit` and `highres` are for.
"""

from __future__ import annotations

from linfusion_engine.planner import RenderPlan
from linfusion_engine.strategies.base import StrategyContext


def run_direct(ctx: StrategyContext, plan: RenderPlan):
    (stage,) = plan.stages
    return ctx.to_pil(ctx.run(stage))
