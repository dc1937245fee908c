"""What the engine can do, declared once: sizes, attention modes, strategies, conditioning, features.

Torch-free and importing nothing of ours, so that manifest validation, `linstudio plan`, the
catalogue's re-render planning and the gallery can all ask it without loading a model. Every
other room builds its checks from these names instead of writing its own copy: the manifest
schema's Literals and descriptions, the engine's request checks and the planner's strategies all
read them here. So whatever the schema accepts, the engine supports: there is no second list of
"supported features" to keep in step (docs/architecture.md, "What the engine declares").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# -- sizes ------------------------------------------------------------------------------------------
SIZE_STEP = 8  # the VAE downsamples 8x: a side that is not a multiple of 8 has no latent
MAX_SIDE = 16384  # the largest side LinFusion is published at (16K); beyond it nothing is tested


def side_problem(side: str, value: object) -> str | None:
    """Why one side (`width` or `height`) cannot be rendered, or None when it can (see `size_problem`).

    Apart from `size_problem` for requests that give one side and leave the other to the model's
    native size.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        return f"{side} must be a whole number of pixels, got {value!r}"
    if value <= 0:
        return f"{side} must be positive, got {value}"
    if value % SIZE_STEP:
        return f"{side} must be a multiple of {SIZE_STEP}, got {value}"
    if value > MAX_SIDE:
        return f"{side} must be at most {MAX_SIDE}, got {value}"
    return None


def size_problem(width: object, height: object) -> str | None:
    """Why `width` x `height` cannot be rendered (one sentence), or None when it can.

    The one size rule: each side a positive whole number of pixels, a multiple of SIZE_STEP, at
    most MAX_SIDE. Callers add where the size came from (a manifest line, a CLI flag, a form).
    """
    return side_problem("width", width) or side_problem("height", height)


def check_size(width: object, height: object) -> None:
    """Raise ValueError with `size_problem`'s sentence when the size cannot be rendered."""
    problem = size_problem(width, height)
    if problem is not None:
        raise ValueError(problem)


# -- attention ---------------------------------------------------------------------------------------
ATTENTION_MODES: tuple[str, ...] = ("auto", "linear", "softmax")
ATTENTION_DESCRIPTION = ("auto: softmax up to the model's native size, LinFusion's linear attention above it; "
                         "linear or softmax force one")


# -- strategies: how a render reaches its size (linfusion_engine.planner runs them) ---------------
@dataclass(frozen=True)
class Strategy:
    """One way to reach a size. `multi_stage`: renders more than one diffusion pass (a feature a
    plan lists); `family`: the only model family it is published for, or None for any."""

    name: str
    description: str
    multi_stage: bool
    family: str | None = None


STRATEGY_TABLE: tuple[Strategy, ...] = (
    Strategy("auto", "chosen per size; the default", multi_stage=False),
    Strategy("direct", "one pass", multi_stage=False),
    Strategy("sdedit", "render small, upscale, re-noise and denoise", multi_stage=True),
    Strategy("highres", "two-pass hires fix, SD-XL only", multi_stage=True, family="sdxl"),
)
STRATEGIES: tuple[str, ...] = tuple(s.name for s in STRATEGY_TABLE)


# -- conditioning: what may steer a render besides its prompt (linfusion_engine.conditioning) -----
CONTROLNET_TYPES: tuple[str, ...] = ("canny", "depth", "normal", "openpose", "lineart", "scribble", "softedge",
                                     "seg", "mlsd", "tile", "inpaint")


@dataclass(frozen=True)
class ConditioningType:
    """One kind of conditioning input.

    Args:
        name: the name the engine, the job record's `conditioning` and the plan use.
        manifest_field: the manifest key that asks for it (an asset's or `defaults`' field).
        registry_part: what the model's registry entry must provide (`ModelEntry` attribute), or
            None when it needs nothing from the registry.
        description: one line, for people (the plan, the docs).
    """

    name: str
    manifest_field: str
    registry_part: str | None
    description: str


CONDITIONING: tuple[ConditioningType, ...] = (
    ConditioningType("controlnet", "controlnet", "controlnets",
                     "control maps steering the composition (a ControlNet per type in the model's entry)"),
    ConditioningType("ip_adapter", "ip_adapter", "ip_adapter",
                     "reference images whose look the render borrows (the model's IP-Adapter)"),
    ConditioningType("init_image", "init_image", None,
                     "an image to start from: image-to-image, or inpainting with a mask"),
    ConditioningType("lora", "lora", "loras", "LoRA weights registered with the model, by name"),
)
CONDITIONING_TYPES: tuple[str, ...] = tuple(c.name for c in CONDITIONING)


# -- features: what a render may ask for beyond one plain text-to-image pass ----------------------
TILE_AXES: tuple[str, ...] = ("x", "y")  # tileable: true wraps both, "x" or "y" one, false none

# How a render is meant to be seen. An equirectangular panorama (a VR team's 360-degree sky) covers
# 360 by 180 degrees: it is 2:1 and wraps horizontally, so it renders tileable on x.
PROJECTIONS: tuple[str, ...] = ("equirectangular",)
PROJECTION_TILEABLE = {"equirectangular": "x"}


def projection_problem(projection: str | None, width: int, height: int) -> str | None:
    """Why a `projection` cannot have this size (one sentence), or None."""
    if projection == "equirectangular" and width != 2 * height:
        return f"an equirectangular panorama is 2:1 (360 by 180 degrees); {width}x{height} is not"
    return None


def features_used(conditioning: Iterable[str], tileable: bool | str, strategy: str) -> list[str]:
    """The features a render asks for, in declaration order: its conditioning types, `tileable`
    (any axis), and `strategy:NAME` for a multi-stage strategy. What `linstudio plan` lists."""
    asked = set(conditioning)
    used = [c.name for c in CONDITIONING if c.name in asked]
    if tileable is not False:
        used.append("tileable")
    if any(s.name == strategy and s.multi_stage for s in STRATEGY_TABLE):
        used.append(f"strategy:{strategy}")
    return used
