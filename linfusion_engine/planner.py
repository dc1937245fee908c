"""How a render reaches its size: the strategy, its stages and strengths, and what it will cost.

One source of truth for the stage schedule: the engine's strategies run exactly the stages
`plan_render` lists, and `linstudio plan` prints the same list with estimated peak memory and
time, so the flow and the operator can route a 16K job to a large GPU before it starts. This
module imports no torch (manifest planning must answer in about a second).

Published recipes (see the LinFusion reference, section 3), scaled by the model's native size:
- `direct`: one text-to-image pass at the target; good up to about twice the native *area*
  (SD-1.5: 724x724, 1024x512). Above it the model repeats its content: `shapes-sd15` at twice its
  native side (four times the area) drew more than one object in 86% of 200 held-out prompts
  (docs/quality.md).
- `sdedit`: a text-to-image base whose area is at most twice the native area (SD-1.5: 1024x512
  for 16384x8192), then one image-to-image stage per doubling with strengths 0.4, 0.3, 0.2, 0.1
  (0.1 for any further doubling), or the model's own (`ModelEntry.sdedit_strengths`: a fine-tune
  that redraws edges at the larger stages keeps them with lower ones); the last stage lands exactly on the target, so a target that is
  not the base times a power of two just makes the last step a little more or less than 2x.
- `highres` (SD-XL, DemoFusion-derived): base long side at most the native side, scales =
  ceil(log2(target long side / native)), each exactly doubling, per-scale strengths
  linspace(0.32, 0, n + 1)[:n]. When the target is not the base times 2^n, the doublings stop at
  the largest size not above the target and a final `refine` stage (resize + image-to-image at
  strength 0.1, no dilated branch) lands on it.
- `auto`: `direct` up to twice the native area, which is exactly the largest base `sdedit` starts
  from, so `auto` never renders in one pass a size the published recipe would not; above it
  `highres` for SD-XL, `sdedit` otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from linfusion_engine.capabilities import STRATEGIES  # declared there; the stages are worked out here

SDEDIT_STRENGTHS: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)  # per doubling, published for SD-1.5
HIGHRES_FIRST_STRENGTH = 0.32  # linspace(0.32, 0, n + 1), published for SD-XL
REFINE_STRENGTH = 0.1  # the last stage of a highres chain that is not an exact doubling
DIRECT_AREA_LIMIT = 2  # direct sampling holds up to about twice the native area (the published base)
GIB = 1024**3


@dataclass(frozen=True)
class Stage:
    """One diffusion pass at one size.

    Args:
        kind: `txt2img` (from noise), `img2img` (resize the previous stage and re-noise it),
            `highres` (img2img with the skip residual and dilated branch) or `refine` (the
            resize-and-refine that lands a highres chain on a non-power-of-two target).
        width, height: pixels, multiples of 8.
        strength: how much of the schedule is re-run (None for txt2img).
        dilation: the dilated branch's factor relative to the base (highres stages only).
    """

    kind: str
    width: int
    height: int
    strength: float | None = None
    dilation: int | None = None

    def label(self) -> str:
        size = f"{self.width}x{self.height}"
        return size if self.strength is None else f"{size}@{self.strength:g}"


@dataclass(frozen=True)
class RenderPlan:
    """A render's strategy (resolved from `auto`), its stages, and why."""

    requested: str
    strategy: str
    stages: tuple[Stage, ...]
    note: str = ""

    def to_dict(self) -> dict:
        return {"strategy_requested": self.requested, "strategy": self.strategy, "note": self.note,
                "stages": [asdict(stage) for stage in self.stages]}

    def label(self) -> str:
        return " > ".join(stage.label() for stage in self.stages)


def _round8(value: float) -> int:
    return max(8, int(value / 8 + 0.5) * 8)


def _floor8(value: float) -> int:
    return max(8, int(value // 8) * 8)


def choose_strategy(requested: str, width: int, height: int, family: str, native: int) -> str:
    """The strategy a request runs: `requested` unless it is `auto` (see the module docstring)."""
    if requested not in STRATEGIES:
        raise ValueError(f"unknown strategy {requested!r}; use one of {', '.join(STRATEGIES)}")
    if requested == "highres" and family != "sdxl":
        raise ValueError(f"strategy 'highres' is the SD-XL recipe; model family {family!r} uses sdedit")
    if requested != "auto":
        return requested
    if width * height <= DIRECT_AREA_LIMIT * native * native:
        return "direct"
    return "highres" if family == "sdxl" else "sdedit"


def plan_render(requested: str, width: int, height: int, family: str, native: int,
                sdedit_strengths: tuple[float, ...] | None = None) -> RenderPlan:
    """The stages that render `width` x `height` with strategy `requested` on a model of `family`.

    `sdedit_strengths`: the model's own strength per doubling of the `sdedit` chain (None: the
    published SDEDIT_STRENGTHS).
    """
    strategy = choose_strategy(requested, width, height, family, native)
    if strategy == "direct":
        return RenderPlan(requested, strategy, (Stage("txt2img", width, height),))
    if strategy == "sdedit":
        return _plan_sdedit(requested, width, height, native, sdedit_strengths or SDEDIT_STRENGTHS)
    return _plan_highres(requested, width, height, native)


def _plan_sdedit(requested: str, width: int, height: int, native: int, strengths: tuple[float, ...]) -> RenderPlan:
    # Doublings k: the smallest with base area <= 2 x native area (16384x8192 on 512: k = 4).
    ratio = width * height / (2 * native * native)
    doublings = max(0, math.ceil(math.log2(math.sqrt(ratio)) - 1e-9)) if ratio > 1 else 0
    stages = [Stage("txt2img", _round8(width / 2**doublings), _round8(height / 2**doublings))]
    for index in range(1, doublings + 1):
        scale = 2 ** (doublings - index)
        strength = strengths[min(index - 1, len(strengths) - 1)]
        stages.append(Stage("img2img", _round8(width / scale), _round8(height / scale), strength))
    exact = all(s.width * 2 ** (doublings - i) == width and s.height * 2 ** (doublings - i) == height
                for i, s in enumerate(stages))
    note = "" if exact else "target is not the base times a power of two: stage sizes rounded to multiples of 8"
    return RenderPlan(requested, "sdedit", tuple(stages), note)


def _plan_highres(requested: str, width: int, height: int, native: int) -> RenderPlan:
    long_side = max(width, height)
    scales = max(0, math.ceil(math.log2(long_side / native) - 1e-9)) if long_side > native else 0
    factor = 2**scales
    base_w, base_h = _floor8(width / factor), _floor8(height / factor)
    strengths = [HIGHRES_FIRST_STRENGTH * (1 - i / scales) for i in range(scales)] if scales else []  # linspace(0.32, 0, n + 1)[:n]
    stages = [Stage("txt2img", base_w, base_h)]
    for index in range(1, scales + 1):
        stages.append(Stage("highres", base_w * 2**index, base_h * 2**index, round(strengths[index - 1], 4),
                            dilation=2**index))
    last = stages[-1]
    note = f"base times 2^{scales}: exact"
    if (last.width, last.height) != (width, height):
        stages.append(Stage("refine", width, height, REFINE_STRENGTH))
        note = (f"{width}x{height} is not the base {base_w}x{base_h} times 2^{scales}: "
                f"doublings stop at {last.width}x{last.height}, a final resize-and-refine stage lands on the target")
    return RenderPlan(requested, "highres", tuple(stages), note)


# -- estimates ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CostProfile:
    """What one model costs, for the estimates. Bytes are at 2 bytes per value (bf16/fp16);
    `estimate` scales them by the render dtype's size.

    Args:
        weights_bytes: UNet + VAE + text encoders.
        unet_bytes_per_latent_px: peak UNet activations per latent pixel for one sample
            (linear attention: linear in the token count).
        vae_bytes_per_px: peak VAE decoder activations per output pixel (whole-image decode).
        seconds_per_latent_px_step: UNet time per latent pixel per step for two samples (CFG),
            on the reference device of `device_kind`.
    """

    weights_bytes: float
    unet_bytes_per_latent_px: float
    vae_bytes_per_px: float
    seconds_per_latent_px_step: dict


# Real models: fitted to the published SD-1.5 LinFusion figures (8 steps, 80 GB GPU: 4096^2 in
# 8.9 s and 15 GB; 16384x8192 in 82 s) and SD-XL's larger UNet (about 3x the work per token);
# the VAE figure is a whole-image decoder pass (about 1 KB per pixel in bf16). Not yet checked on
# a GPU: bench/gpu.py measures them. Tiny models: measured on the CPU in fp32 with glibc returning
# freed memory (tests/engine/test_planner_memory.py checks the estimate against a measured peak).
PROFILES: dict[str, CostProfile] = {
    "sd15": CostProfile(2.2e9, 24_000.0, 1000.0, {"cuda": 4.2e-6, "cpu": 4e-4}),
    "sdxl": CostProfile(7.0e9, 40_000.0, 1000.0, {"cuda": 1.3e-5, "cpu": 1.2e-3}),
    "sd21": CostProfile(2.6e9, 24_000.0, 1000.0, {"cuda": 4.2e-6, "cpu": 4e-4}),
    "tiny": CostProfile(1.6e7, 12_000.0, 520.0, {"cuda": 2e-8, "cpu": 2.5e-5}),
}
TILED_VAE_TILE_PX = 2048  # published: VAE tiles of 2048 px (256 latent) from 4K on
LOW_MEMORY_UNET_FACTOR = 0.45  # CFG one sample at a time, chunked feed-forward, skips on the host


@dataclass(frozen=True)
class Estimate:
    """Predicted peak device memory and time of a render plan."""

    peak_bytes: int
    seconds: float
    vae_tiled: bool
    low_memory: bool

    def to_dict(self) -> dict:
        return {"peak_bytes": self.peak_bytes, "peak_gib": round(self.peak_bytes / GIB, 3),
                "seconds": round(self.seconds, 2), "vae_tiled": self.vae_tiled, "low_memory": self.low_memory}


def profile_for(family: str, tiny: bool) -> CostProfile:
    if tiny:
        return PROFILES["tiny"]
    try:
        return PROFILES[family]
    except KeyError:
        raise ValueError(f"no cost profile for model family {family!r}") from None


def vae_needs_tiling(width: int, height: int, profile: CostProfile, dtype_bytes: int,
                     budget_bytes: float | None) -> bool:
    """Tile the VAE when a whole-image pass would take more than a quarter of the budget, and
    always from 4K on (the published threshold, whatever the budget)."""
    if max(width, height) >= 4096:
        return True
    if budget_bytes is None:
        return False
    return profile.vae_bytes_per_px * dtype_bytes / 2 * width * height > budget_bytes / 4


def estimate(plan: RenderPlan, *, steps: int, family: str, tiny: bool, dtype_bytes: int = 2,
             device_kind: str = "cuda", guidance: bool = True, low_memory: bool = False,
             budget_bytes: float | None = None) -> Estimate:
    """Peak memory and time of `plan`: weights plus the largest stage's UNet activations or VAE pass.

    A low-memory render keeps about `LOW_MEMORY_UNET_FACTOR` of the UNet activations; a tiled VAE
    pass holds one 2048 px tile's activations plus the full image in fp32.
    """
    profile = profile_for(family, tiny)
    scale = dtype_bytes / 2
    samples = 2 if guidance else 1
    peak = 0.0
    seconds = 0.0
    tiled_any = False
    for stage in plan.stages:
        latent_px = (stage.width // 8) * (stage.height // 8)
        unet = profile.unet_bytes_per_latent_px * scale * latent_px * (1 if low_memory else samples)
        if low_memory:
            unet *= LOW_MEMORY_UNET_FACTOR
        tiled = vae_needs_tiling(stage.width, stage.height, profile, dtype_bytes, budget_bytes)
        tiled_any |= tiled
        pixels = min(stage.width * stage.height, TILED_VAE_TILE_PX**2) if tiled else stage.width * stage.height
        vae = profile.vae_bytes_per_px * scale * pixels + (12 * stage.width * stage.height if tiled else 0)
        peak = max(peak, unet, vae)
        stage_steps = steps if stage.strength is None else max(1, math.ceil(steps * stage.strength))
        passes = 2 if stage.kind == "highres" else 1  # the dilated branch is a second UNet pass
        seconds += (profile.seconds_per_latent_px_step.get(device_kind, profile.seconds_per_latent_px_step["cpu"])
                    * latent_px * stage_steps * passes * samples / 2)
    return Estimate(int(profile.weights_bytes * scale + peak), seconds, tiled_any, low_memory)


def plan_job(*, strategy: str, width: int, height: int, steps: int, guidance: float, family: str,
             native: int, tiny: bool, device_kind: str = "cuda", dtype_bytes: int = 2,
             budget_bytes: float | None = None, sdedit_strengths: tuple[float, ...] | None = None) -> dict:
    """A job's plan and estimate as JSON-able data (what `linstudio plan --json` shows per job).

    The estimate is for a normal render; `low_memory_estimate` is what the low-memory mode would
    need, so a router can tell a job that needs a large GPU from one that only needs the mode.
    """
    plan = plan_render(strategy, width, height, family, native, sdedit_strengths)
    common = dict(steps=steps, family=family, tiny=tiny, dtype_bytes=dtype_bytes, device_kind=device_kind,
                  guidance=guidance > 1, budget_bytes=budget_bytes)
    return {**plan.to_dict(), "stages_label": plan.label(),
            "estimate": estimate(plan, **common).to_dict(),
            "low_memory_estimate": estimate(plan, **common, low_memory=True).to_dict(),
            "assumed_device": {"kind": device_kind, "dtype_bytes": dtype_bytes}}


def estimate_peak_gib(record: dict, registry) -> float:
    """Planned peak device memory in GiB of a job record (a GPU in bf16, normal mode): what the
    flows route on (`flows.shards.needs_large_gpu`). The normal mode, not the low-memory one:
    a job the engine could squeeze onto a small GPU still runs faster on a large one.
    """
    entry = registry.get(record["model"])
    plan = plan_render(record.get("strategy") or "auto", record["width"], record["height"], entry.family,
                       entry.native_size, entry.sdedit_strengths)
    result = estimate(plan, steps=record.get("steps") or 30, family=entry.family, tiny=entry.is_toy_scale,
                      guidance=(record.get("guidance") or 0) > 1)
    return result.peak_bytes / GIB
