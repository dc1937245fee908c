"""The extra pipeline kinds conditioning needs, registered with the strategies' stage runner.

`run_stage` picks a pipeline by kind from `StagePipelines`, which builds siblings of the loaded
pipeline on first use through `PIPELINE_FACTORIES` (all sharing the loaded modules). ControlNet
needs its own pipeline classes; this module adds two kinds:

- `controlnet`: text-to-image with ControlNets (control map as `image=`);
- `controlnet_img2img`: image-to-image with ControlNets (start as `image=`, map as `control_image=`).

Which ControlNets a render uses changes per request, while a sibling pipeline is built once, so
the sibling is built with an empty `MultiControlNetModel` and `use_controlnets` puts the
request's ControlNets on it before each stage. Inpainting needs no pipeline of its own here:
the mask is applied by a step callback on the image-to-image kinds (`linfusion_engine.conditioning.context`).
"""

from __future__ import annotations

import inspect

from linfusion_engine.strategies.stage import PIPELINE_FACTORIES

CONTROLNET_KINDS = {"txt2img": "controlnet", "img2img": "controlnet_img2img"}


def _is_sdxl(pipe) -> bool:
    return getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"


def _controlnet_sibling(pipe, image_to_image: bool):
    from diffusers import (
        StableDiffusionControlNetImg2ImgPipeline,
        StableDiffusionControlNetPipeline,
        StableDiffusionXLControlNetImg2ImgPipeline,
        StableDiffusionXLControlNetPipeline,
    )
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    if _is_sdxl(pipe):
        cls = StableDiffusionXLControlNetImg2ImgPipeline if image_to_image else StableDiffusionXLControlNetPipeline
    else:
        cls = StableDiffusionControlNetImg2ImgPipeline if image_to_image else StableDiffusionControlNetPipeline
    # Built from the loaded pipeline's modules directly: `from_pipe` casts the whole pipeline to a
    # dtype, which fails on an empty MultiControlNetModel (it has no parameters to read a dtype from).
    accepted = inspect.signature(cls.__init__).parameters
    parts = {name: module for name, module in pipe.components.items() if name in accepted}
    extra = {}
    if "requires_safety_checker" in accepted:
        extra["requires_safety_checker"] = False
    if "add_watermarker" in accepted:
        extra["add_watermarker"] = getattr(pipe, "watermark", None) is not None
    return cls(**parts, controlnet=MultiControlNetModel([]), **extra)


def use_controlnets(pipe, controlnets: list) -> None:
    """Put the request's ControlNets (in order) on a ControlNet sibling pipeline."""
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    pipe.controlnet = MultiControlNetModel(list(controlnets))


PIPELINE_FACTORIES.setdefault("controlnet", lambda pipe: _controlnet_sibling(pipe, image_to_image=False))
PIPELINE_FACTORIES.setdefault("controlnet_img2img", lambda pipe: _controlnet_sibling(pipe, image_to_image=True))
