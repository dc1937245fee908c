"""`highres`: the DemoFusion-derived schedule published for SD-XL with LinFusion.

Per scale (each doubling the previous size): decode, resize, re-encode to `z0`, re-noise to the
scale's strength (linspace(0.32, 0, n + 1)), then denoise with two additions, both weighted by
c(t) = (1 + cos(pi (T - t) / T)) / 2, which is 1 at the start of the schedule and 0 at its end:

- skip residual: before every step the latents are pulled toward z0 noised to that step,
  z <- c^3 * noised(z0) + (1 - c^3) * z, so the early steps keep the base's composition;
- dilated branch: the UNet runs a second time with every k x k convolution dilated by r (the
  scale's factor over the base) and its input Gaussian-blurred (kernel 2r - 1, sigma
  0.8 (0.99 c + 0.01)) and renormalised to the input's per-channel statistics; the two noise
  predictions mix as (1 - c) * plain + c * dilated, which gives the big picture a receptive field
  like the base model's.

After each scale the latents are renormalised to the base's per-channel mean and std. LinFusion
sees the whole latent in one pass, so unlike DemoFusion there are no local patches. A target
that is not the base times 2^n ends with a plain resize-and-refine stage (see the planner).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from linfusion_engine.planner import RenderPlan, Stage
from linfusion_engine.schedulers import noised
from linfusion_engine.strategies.base import StrategyContext
from linfusion_engine.tiling import gaussian_blur

NUM_TRAIN_TIMESTEPS = 1000


def cosine_weight(timestep: float, total: int = NUM_TRAIN_TIMESTEPS) -> float:
    """c(t) = (1 + cos(pi (T - t) / T)) / 2."""
    return (1 + math.cos(math.pi * (total - float(timestep)) / total)) / 2


def renormalise(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`x` (B, C, H, W) rescaled to `reference`'s per-channel mean and std."""
    dims = (-2, -1)
    mean, std = x.mean(dims, keepdim=True), x.std(dims, keepdim=True)  # (B, C, 1, 1)
    ref_mean, ref_std = reference.mean(dims, keepdim=True), reference.std(dims, keepdim=True)  # (B, C, 1, 1)
    return (x - mean) / (std + 1e-6) * ref_std + ref_mean


@contextlib.contextmanager
def dilated_convs(unet: nn.Module, factor: int):
    """Every k x k (k > 1) convolution of `unet` dilated by `factor`, its padding scaled to match
    (so sizes are unchanged, strided ones included)."""
    changed = []
    for conv in unet.modules():
        if isinstance(conv, nn.Conv2d) and conv.kernel_size[0] > 1 and not isinstance(conv.padding, str):
            changed.append((conv, conv.dilation, conv.padding))
            conv.dilation = (factor * conv.dilation[0], factor * conv.dilation[1])
            conv.padding = (factor * conv.padding[0], factor * conv.padding[1])
    try:
        yield
    finally:
        for conv, dilation, padding in changed:
            conv.dilation, conv.padding = dilation, padding


@contextlib.contextmanager
def dilated_branch(unet: nn.Module, factor: int, axes: str):
    """Replace `unet.forward` for the duration by the two-branch mix described above."""
    plain_forward = unet.forward
    previous = unet.__dict__.get("forward")  # another wrapper (low-memory mode) to put back

    def forward(sample, timestep, *args, **kwargs):
        c = cosine_weight(timestep.flatten()[0].item() if torch.is_tensor(timestep) else timestep)
        plain = plain_forward(sample, timestep, *args, **kwargs)
        kernel = 2 * factor - 1
        blurred = gaussian_blur(sample, kernel, 0.8 * (0.99 * c + 0.01), axes)  # (B, 4, h, w)
        blurred = renormalise(blurred, sample)
        with dilated_convs(unet, factor):
            dilated = plain_forward(blurred, timestep, *args, **kwargs)
        plain_eps = plain[0] if isinstance(plain, tuple) else plain.sample
        dilated_eps = dilated[0] if isinstance(dilated, tuple) else dilated.sample
        mixed = (1 - c) * plain_eps + c * dilated_eps  # (B, 4, h, w)
        if isinstance(plain, tuple):
            return (mixed, *plain[1:])
        plain.sample = mixed
        return plain

    unet.forward = forward
    try:
        yield
    finally:
        if previous is None:
            del unet.forward  # back to the class method
        else:
            unet.forward = previous


def skip_residual_callback(z0: torch.Tensor, noise: torch.Tensor):
    """A `callback_on_step_end` pulling the latents toward z0 noised to the next step (weight c^3)."""
    def callback(pipe, index, timestep, callback_kwargs):
        timesteps = pipe.scheduler.timesteps
        position = (timesteps == timestep).nonzero()
        if not len(position) or int(position[-1]) + 1 >= len(timesteps):
            return callback_kwargs  # the last step: nothing follows
        following = timesteps[int(position[-1]) + 1]
        c3 = cosine_weight(following.item()) ** 3
        latents = callback_kwargs["latents"]
        pulled = noised(pipe.scheduler, z0, noise, following).to(latents.dtype)  # (1, 4, h, w)
        callback_kwargs["latents"] = c3 * pulled + (1 - c3) * latents
        return callback_kwargs

    return callback


def run_highres(ctx: StrategyContext, plan: RenderPlan):
    base, *later = plan.stages
    latents = ctx.run(base)  # (1, 4, h0/8, w0/8)
    reference = latents.float()
    unet = ctx.pipelines.base.unet
    for stage in later:
        z0 = ctx.upscale(latents, stage).to(latents.dtype)  # (1, 4, h/8, w/8)
        if stage.kind == "refine":
            latents = ctx.run(stage, z0)
            continue
        noise = torch.randn(z0.shape, generator=ctx.generator, device=ctx.generator.device,
                            dtype=torch.float32).to(z0.device, z0.dtype)
        with dilated_branch(unet, stage.dilation, ctx.axes):
            latents = ctx.run(stage, z0, callback_on_step_end=skip_residual_callback(z0, noise),
                              callback_on_step_end_tensor_inputs=["latents"])
        latents = renormalise(latents.float(), reference).to(latents.dtype)
    return ctx.to_pil(latents)


__all__ = ["Stage", "cosine_weight", "dilated_branch", "dilated_convs", "renormalise", "run_highres"]
