"""The engine's render path: plan the stages, decide memory and tiling, run the strategy.

`Engine.render` calls `render_stages` with the pipeline loaded and the generator seeded; this
module owns everything between that and the final image, and returns the metadata the render
records: strategy (requested and chosen), stages with sizes, strengths and timings, tiling, the
low-memory decision, and the memory estimate next to what was measured.
"""

from __future__ import annotations

from linfusion_engine import planner, tiling
from linfusion_engine.memory import RssPeak, device_budget_bytes, low_memory_mode
from linfusion_engine.requests import choose_attention
from linfusion_engine.schedulers import make_scheduler
from linfusion_engine.strategies import StagePipelines, StrategyContext, run_strategy
from linfusion_engine.tokenizers import clean_prompt


def _dtype_bytes(dtype) -> int:
    import torch

    return torch.finfo(dtype).bits // 8


def render_stages(engine, request, width: int, height: int, generator, conditioned=None):
    """Render `request` at `width` x `height` on `engine` (loaded, under its lock).

    `engine.vae_tile_px`, when an engine has it set (tests, operators), forces the tiled VAE with
    that tile size from any image larger than one tile; otherwise the VAE tiles from the size the
    planner says a whole pass stops fitting (always from 4K on), with `tiling.TILE_PX` tiles.
    """
    import contextlib

    entry = engine.entry
    plan = planner.plan_render(request.strategy, width, height, entry.family, entry.native_size,
                               entry.sdedit_strengths)
    budget = device_budget_bytes(engine.device)
    dtype_bytes = _dtype_bytes(engine.dtype)
    common = dict(steps=request.steps, family=entry.family, tiny=entry.is_toy_scale, dtype_bytes=dtype_bytes,
                  device_kind=engine.device.type, guidance=request.guidance > 1, budget_bytes=budget)
    normal = planner.estimate(plan, **common)
    low_memory = request.low_memory if request.low_memory is not None else (
        budget is not None and normal.peak_bytes > budget)
    chosen = planner.estimate(plan, **{**common, "low_memory": low_memory}) if low_memory else normal

    forced_tile = getattr(engine, "vae_tile_px", None)
    profile = planner.profile_for(entry.family, entry.is_toy_scale)
    tiled_sizes: list[str] = []

    def vae_tile_px(w: int, h: int) -> int | None:
        if forced_tile is not None:
            tile = forced_tile if max(w, h) > forced_tile else None
        else:
            tile = tiling.TILE_PX if planner.vae_needs_tiling(w, h, profile, dtype_bytes, budget) else None
        if tile is not None and f"{w}x{h}" not in tiled_sizes:
            tiled_sizes.append(f"{w}x{h}")
        return tile

    def use_attention(w: int, h: int) -> str:
        backend = choose_attention(request, w, h, entry)
        engine._use_attention(backend)
        return backend

    # issue 6: `conditioned` (a linfusion_engine.conditioning.session.RenderSession) builds a
    # StrategyContext subclass that conditions every stage; None renders from the prompt alone.
    ctx = (conditioned.context if conditioned is not None else StrategyContext)(
        # OpenAI CLIP's own clean-up (ftfy, HTML entities), which transformers 5 no longer applies
        pipelines=_pipelines(engine), prompt=clean_prompt(request.prompt),
        negative_prompt=clean_prompt(request.negative_prompt),
        steps=request.steps, guidance=float(request.guidance),
        new_scheduler=lambda: make_scheduler(request.scheduler, engine._scheduler_config),
        generator=generator, axes=tiling.wrap_axes(request.tileable), vae_tile_px=vae_tile_px,
        use_attention=use_attention)
    sampler = RssPeak() if engine.device.type == "cpu" else contextlib.nullcontext()
    saving = low_memory_mode(engine.pipeline.unet, engine.device) if low_memory else contextlib.nullcontext()
    with sampler, saving:
        image = run_strategy(ctx, plan)
    metadata = {
        "strategy": plan.strategy,
        "strategy_requested": plan.requested,
        "strategy_note": plan.note,
        "stages": ctx.records,
        "tileable": request.tileable,
        "tiling": {"wrap_axes": ctx.axes, "vae_tiled_sizes": tiled_sizes,
                   "vae_tile_px": forced_tile or tiling.TILE_PX,
                   "vae_overlap_px": tiling.overlap_for(forced_tile or tiling.TILE_PX, None)},
        "low_memory": bool(low_memory),
        "low_memory_requested": request.low_memory,
        "memory": {"estimate_bytes": chosen.peak_bytes, "estimate_seconds": round(chosen.seconds, 3),
                   "budget_bytes": budget,
                   "measured_rss_bytes": sampler.bytes if isinstance(sampler, RssPeak) else None},
    }
    return image, metadata


def _pipelines(engine) -> StagePipelines:
    """The engine's StagePipelines, kept on the engine so siblings (img2img) are built once."""
    pipelines = getattr(engine, "_stage_pipelines", None)
    if pipelines is None or pipelines.base is not engine.pipeline:
        pipelines = StagePipelines(engine.pipeline)
        engine._stage_pipelines = pipelines
    return pipelines
