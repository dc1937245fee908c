# STRUCTURE READY (issue 5)
"""Strategies: how a render reaches its size, as a chain of diffusion stages.

The schedule (which stages, sizes and strengths) comes from `linfusion_engine.planner`, which is
torch-free so `linstudio plan` can show it; this package runs it. Every stage goes through one
function, `run_stage` (stage.py), on the engine's loaded pipeline; conditioning (issue 6) is
threaded through `StageInputs.pipeline_kwargs`, per stage via `StrategyContext.stage_kwargs`.

- `direct` (direct.py): one pass at the target.
- `sdedit` (sdedit.py): base, then resize + image-to-image per doubling (0.4, 0.3, 0.2, 0.1).
- `highres` (highres.py): SD-XL, DemoFusion-derived: skip residual, dilated branch, renormalisation.
- `auto`: chosen by `planner.choose_strategy` from the target size and the model family.
"""

from __future__ import annotations

from linfusion_engine.planner import RenderPlan, Stage, choose_strategy, plan_render
from linfusion_engine.strategies.base import StrategyContext
from linfusion_engine.strategies.direct import run_direct
from linfusion_engine.strategies.highres import run_highres
from linfusion_engine.strategies.sdedit import run_sdedit
from linfusion_engine.strategies.stage import PIPELINE_FACTORIES, StageInputs, StagePipelines, run_stage

RUNNERS = {"direct": run_direct, "sdedit": run_sdedit, "highres": run_highres}


def run_strategy(ctx: StrategyContext, plan: RenderPlan):
    """Run `plan`'s stages; returns the final RGB PIL image (stage records land in `ctx.records`)."""
    return RUNNERS[plan.strategy](ctx, plan)


__all__ = ["PIPELINE_FACTORIES", "RUNNERS", "RenderPlan", "Stage", "StageInputs", "StagePipelines",
           "StrategyContext", "choose_strategy", "plan_render", "run_stage", "run_strategy"]
