"""Seamless (tileable) output and the tiled VAE.

Tileable. A texture or a 360-degree panorama must wrap: its last column continues into its first.
Every operation that looks at neighbouring pixels must then see the opposite edge where the image
ends: each UNet and VAE convolution (`circular_convs`), the resize between stages (`resize`), the
Gaussian blur of the dilated branch (`gaussian_blur`) and the tiled VAE (`decode` / `encode`,
which extend the latent around the wrapped axis instead of padding it). Attention needs nothing:
it already sees every token. `axes` is a string of the wrapped axes: "xy", "x", "y" or "".

Tiled VAE. A whole-image VAE pass at 8K holds gigabytes of activations, so from the size where a
whole pass stops fitting the VAE runs in overlapping tiles, blended with a linear ramp. Tile
sizes are chosen, not left to diffusers' default (the tiny model's `sample_size` of 64 px would
mean thousands of tiles): `TILE_PX` 2048 px (256 latent) with a 256 px overlap, as published for
16K; tests pass smaller ones.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

TILE_PX = 2048  # published: 2048 px tiles (256 latent) from 4K on
OVERLAP_PX = TILE_PX // 8  # 256 px, as published; smaller tiles overlap by an eighth too


def wrap_axes(tileable: bool | str) -> str:
    """`tileable` (false, true, "x", "y") as the axes that wrap: "", "xy", "x" or "y"."""
    if tileable is True:
        return "xy"
    if tileable is False or tileable is None:
        return ""
    if tileable in ("x", "y"):
        return tileable
    raise ValueError(f"tileable must be false, true, 'x' or 'y', got {tileable!r}")


def pad_wrapped(x: torch.Tensor, pad_x: int, pad_y: int, axes: str, mode: str = "constant") -> torch.Tensor:
    """Pad a (B, C, H, W) tensor: circularly on the wrapped axes, with `mode` on the others."""
    if pad_x and "x" in axes:
        x = F.pad(x, (pad_x, pad_x, 0, 0), mode="circular")  # (B, C, H, W + 2 pad_x)
    elif pad_x:
        x = F.pad(x, (pad_x, pad_x, 0, 0), mode=mode)
    if pad_y and "y" in axes:
        x = F.pad(x, (0, 0, pad_y, pad_y), mode="circular")  # (B, C, H + 2 pad_y, W)
    elif pad_y:
        x = F.pad(x, (0, 0, pad_y, pad_y), mode=mode)
    return x


def _wrapped_conv_forward(conv: nn.Conv2d, axes: str):
    """A `_conv_forward` for `conv` that pads by its own (current) padding, wrapping on `axes`.

    It reads `conv.padding` and `conv.dilation` at each call, so the highres dilated branch,
    which raises both, stays seamless too.
    """
    def forward(input, weight, bias):
        pad_y, pad_x = conv.padding
        padded = pad_wrapped(input, pad_x, pad_y, axes)
        return F.conv2d(padded, weight, bias, conv.stride, 0, conv.dilation, conv.groups)

    return forward


def _wrapped_asymmetric_forward(conv: nn.Conv2d, axes: str):
    """For the VAE encoder's downsamplers, which pad (right 1, bottom 1) themselves before an
    unpadded strided conv: the same padding, taken from the opposite edge on `axes`."""
    def forward(input, weight, bias):
        x = F.pad(input, (0, 1, 0, 0), mode="circular" if "x" in axes else "constant")  # (B, C, H, W + 1)
        x = F.pad(x, (0, 0, 0, 1), mode="circular" if "y" in axes else "constant")  # (B, C, H + 1, W + 1)
        return F.conv2d(x, weight, bias, conv.stride, 0, conv.dilation, conv.groups)

    return forward


@contextlib.contextmanager
def circular_convs(modules: list[nn.Module], axes: str):
    """Make every padded Conv2d in `modules` wrap on `axes` for the duration (no-op for "").

    diffusers' `Downsample2D` with padding 0 (the VAE encoder) zero-pads right and bottom itself;
    its own padding is switched off and its conv pads the same amount, wrapped.
    """
    from diffusers.models.downsampling import Downsample2D

    patched = []
    downsamplers = []
    if axes:
        for module in modules:
            for child in module.modules():
                if isinstance(child, Downsample2D) and child.use_conv and child.padding == 0:
                    child.padding = -1  # not 0: its forward skips the zero pad
                    child.conv._conv_forward = _wrapped_asymmetric_forward(child.conv, axes)
                    downsamplers.append(child)
                    patched.append(child.conv)
            for conv in module.modules():
                if conv in patched or not isinstance(conv, nn.Conv2d):
                    continue
                if conv.padding_mode == "zeros" and not isinstance(conv.padding, str) and any(conv.padding):
                    conv._conv_forward = _wrapped_conv_forward(conv, axes)
                    patched.append(conv)
    try:
        yield patched
    finally:
        for conv in patched:
            del conv._conv_forward  # back to the class method
        for child in downsamplers:
            child.padding = 0


@contextlib.contextmanager
def plain_convs(modules: list[nn.Module]):
    """Undo `circular_convs` for the duration: tiles of a tiled pass have interior edges."""
    saved = []
    for module in modules:
        for conv in module.modules():
            if isinstance(conv, nn.Conv2d) and "_conv_forward" in conv.__dict__:
                saved.append((conv, conv.__dict__.pop("_conv_forward")))
    try:
        yield
    finally:
        for conv, forward in saved:
            conv._conv_forward = forward


def resize(image: torch.Tensor, width: int, height: int, axes: str) -> torch.Tensor:
    """Bicubic resize of a (B, C, H, W) image to (height, width), seamless on the wrapped axes.

    The wrapped axes are first extended by a margin taken from the opposite edge, resized, and the
    scaled margin cut off again, so the interpolation at the edges sees the wrapped neighbours.
    """
    _, _, h, w = image.shape
    margin = 4
    pad_x = margin if "x" in axes else 0
    pad_y = margin if "y" in axes else 0
    if not (pad_x or pad_y):
        return F.interpolate(image, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    sx, sy = width / w, height / h
    padded = pad_wrapped(image, pad_x, pad_y, axes, mode="replicate")  # (B, C, h + 2 pad_y, w + 2 pad_x)
    out_h = round((h + 2 * pad_y) * sy)
    out_w = round((w + 2 * pad_x) * sx)
    big = F.interpolate(padded, size=(out_h, out_w), mode="bicubic", align_corners=False, antialias=True)
    top = round(pad_y * sy)
    left = round(pad_x * sx)
    return big[:, :, top:top + height, left:left + width]  # (B, C, height, width)


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: float, axes: str) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), wrapping on `axes` and reflecting elsewhere."""
    if kernel <= 1:
        return x
    half = kernel // 2
    coords = torch.arange(kernel, device=x.device, dtype=torch.float32) - half
    weights = torch.exp(-(coords**2) / (2 * sigma * sigma))
    weights = (weights / weights.sum()).to(x.dtype)
    channels = x.shape[1]
    x = pad_wrapped(x, half, half, axes, mode="reflect")  # (B, C, H + 2 half, W + 2 half)
    kx = weights.view(1, 1, 1, kernel).repeat(channels, 1, 1, 1)  # (C, 1, 1, k)
    ky = weights.view(1, 1, kernel, 1).repeat(channels, 1, 1, 1)  # (C, 1, k, 1)
    x = F.conv2d(x, kx, groups=channels)  # (B, C, H + 2 half, W)
    return F.conv2d(x, ky, groups=channels)  # (B, C, H, W)


# -- tiled VAE ------------------------------------------------------------------------------------

def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile start offsets covering [0, length) with tiles of `tile` every `stride` (last one flush)."""
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(count)]


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool, device) -> torch.Tensor:
    """1-D blend weights: a linear ramp over `overlap` on interior edges, flat on outer ones."""
    ramp = torch.ones(length, device=device, dtype=torch.float32)
    if overlap <= 0:
        return ramp
    edge = torch.linspace(1 / (overlap + 1), 1, overlap, device=device).clamp(max=1)
    n = min(overlap, length)
    if not at_start:
        ramp[:n] = edge[:n]
    if not at_end:
        ramp[-n:] = torch.minimum(ramp[-n:], edge[:n].flip(0))
    return ramp


def _tiled(fn, x: torch.Tensor, scale: float, out_channels: int, tile: int, overlap: int, axes: str) -> torch.Tensor:
    """Run `fn` over overlapping tiles of (B, C, H, W) `x` and blend; output is `scale` times the size.

    Wrapped axes are first extended by half a tile from the opposite edge (so the seam is decoded
    inside a tile, like any interior pixel), and the extension is cut off at the end.
    """
    margin = max(overlap, tile // 2)  # the seam then lies deep inside a tile, far from its padded edge
    pad_x = min(margin, x.shape[-1]) if "x" in axes else 0
    pad_y = min(margin, x.shape[-2]) if "y" in axes else 0
    x = pad_wrapped(x, pad_x, pad_y, axes)  # (B, C, H + 2 pad_y, W + 2 pad_x)
    b, _, h, w = x.shape
    stride = max(1, tile - overlap)
    out_h, out_w = round(h * scale), round(w * scale)
    out = torch.zeros(b, out_channels, out_h, out_w, device=x.device, dtype=torch.float32)
    weight = torch.zeros(1, 1, out_h, out_w, device=x.device, dtype=torch.float32)
    ov = round(overlap * scale)
    ys, xs = _starts(h, tile, stride), _starts(w, tile, stride)
    for yi, y0 in enumerate(ys):
        for xi, x0 in enumerate(xs):
            piece = fn(x[:, :, y0:y0 + tile, x0:x0 + tile]).float()  # (B, out_C, th * scale, tw * scale)
            th, tw = piece.shape[-2:]
            oy, ox = round(y0 * scale), round(x0 * scale)
            wy = _ramp(th, ov, yi == 0, yi == len(ys) - 1, x.device)
            wx = _ramp(tw, ov, xi == 0, xi == len(xs) - 1, x.device)
            mask = wy[:, None] * wx[None, :]  # (th, tw)
            out[:, :, oy:oy + th, ox:ox + tw] += piece * mask
            weight[:, :, oy:oy + th, ox:ox + tw] += mask
    out = out / weight
    top, left = round(pad_y * scale), round(pad_x * scale)
    return out[:, :, top:out_h - top, left:out_w - left]


@contextlib.contextmanager
def whole_image_norms(part: nn.Module, preview: torch.Tensor, run: Callable[[torch.Tensor], object]):
    """GroupNorms in `part` that normalise every tile by the statistics of the whole image.

    A GroupNorm normalises by the mean and variance of what it sees. Run per tile, each tile gets
    its own: a tile that is mostly a bright object is normalised differently from one that is
    mostly background, so the same colour comes out differently on either side of a tile border
    (measured on the trained shapes-sd15 VAE at 512 px in 256 px tiles: an orange triangle turned
    yellow in one tile, 56/255 at worst, a visible band across the object). So `run` is first
    called on `preview`, the whole input shrunk to fit one tile; each GroupNorm records the
    per-group mean and variance it sees there, and inside the block every tile is normalised by
    those. Area downsampling keeps each colour's share of the image, which is what these
    statistics depend on; the preview costs one tile more.
    """
    norms = [module for module in part.modules() if isinstance(module, nn.GroupNorm)]
    stats: dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module: nn.GroupNorm, args) -> None:
        x = args[0]
        grouped = x.float().reshape(x.shape[0], module.num_groups, -1)  # (B, G, C/G * H * W)
        stats[module] = (grouped.mean(-1), grouped.var(-1, unbiased=False))  # (B, G) each

    hooks = [norm.register_forward_pre_hook(record) for norm in norms]
    try:
        with torch.no_grad():
            run(preview)
    finally:
        for hook in hooks:
            hook.remove()
    for norm in norms:
        if norm in stats:
            norm.forward = _fixed_statistics_forward(norm, *stats[norm])
    try:
        yield
    finally:
        for norm in norms:
            norm.__dict__.pop("forward", None)  # back to the class's own forward


def _fixed_statistics_forward(norm: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor):
    """A GroupNorm forward that normalises by the given per-group (B, G) mean and variance."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        grouped = x.float().reshape(b, norm.num_groups, -1)  # (B, G, C/G * rest): (B, C, H, W) or attention's (B, C, L)
        grouped = (grouped - mean[..., None]) * torch.rsqrt(var[..., None] + norm.eps)
        out = grouped.reshape(x.shape).to(x.dtype)  # x's own shape
        if norm.affine:
            per_channel = (1, c) + (1,) * (x.dim() - 2)
            out = out * norm.weight.view(per_channel) + norm.bias.view(per_channel)
        return out

    return forward


def preview_of(x: torch.Tensor, side: int) -> torch.Tensor:
    """(B, C, H, W) shrunk by area averaging until neither side exceeds `side`: (B, C, h, w)."""
    h, w = x.shape[-2:]
    shrink = max(1, math.ceil(max(h, w) / side))
    if shrink == 1:
        return x
    size = (max(1, h // shrink), max(1, w // shrink))
    return F.interpolate(x.float(), size=size, mode="area").to(x.dtype)  # (B, C, h, w)


def overlap_for(tile_px: int, overlap_px: int | None) -> int:
    """The overlap for `tile_px` tiles: `overlap_px`, or an eighth of the tile (2048 -> 256, as
    published); never more than a quarter of the tile, so tiles always advance."""
    overlap = tile_px // 8 if overlap_px is None else overlap_px
    return max(0, min(overlap, tile_px // 4))


def decode(vae, latents: torch.Tensor, axes: str = "", tile_px: int | None = None,
           overlap_px: int | None = None) -> torch.Tensor:
    """Scaled latents (B, 4, h, w) -> image (B, 3, 8h, 8w) in [-1, 1], whole or in tiles.

    `tile_px` None decodes in one pass (wrapping through `circular_convs` when `axes`); a tile size
    decodes tiles of that many pixels with `overlap_px` overlap (default: an eighth of the tile),
    seamless on `axes`.
    """
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latents = latents.to(vae.dtype) / vae.config.scaling_factor
    if tile_px is None or max(latents.shape[-2:]) * factor <= tile_px:
        with circular_convs([vae], axes):
            return vae.decode(latents).sample.float()
    tile, overlap = max(1, tile_px // factor), overlap_for(tile_px, overlap_px) // factor
    run = lambda t: vae.decode(t).sample  # noqa: E731
    with plain_convs([vae]), whole_image_norms(vae.decoder, preview_of(latents, tile), run):
        return _tiled(run, latents, factor, 3, tile, overlap, axes)


def encode(vae, image: torch.Tensor, axes: str = "", tile_px: int | None = None,
           overlap_px: int | None = None) -> torch.Tensor:
    """Image (B, 3, H, W) in [-1, 1] -> scaled latents (B, 4, H/8, W/8), the posterior mean.

    The mean, not a sample: the next stage adds its own seeded noise, so a second draw would only
    make the chain depend on one more random number.
    """
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    image = image.to(vae.dtype)
    if tile_px is None or max(image.shape[-2:]) <= tile_px:
        with circular_convs([vae], axes):
            latents = vae.encode(image).latent_dist.mean.float()
    else:
        run = lambda t: vae.encode(t).latent_dist.mean  # noqa: E731
        with plain_convs([vae]), whole_image_norms(vae.encoder, preview_of(image, tile_px), run):
            overlap = overlap_for(tile_px, overlap_px) // factor * factor  # whole latent pixels
            latents = _tiled(run, image, 1 / factor, vae.config.latent_channels, tile_px, overlap, axes)
    return latents * vae.config.scaling_factor
