"""Tileable output wraps: every operation of the chain treats the opposite edge as the neighbour.

Two kinds of checks. Shift-equivariance (can fail on any single non-wrapping operation): with
wrapping on, shifting the input around the wrapped axis shifts the output the same way, for the
UNet stage, the VAE, the resize, the blur, the dilated branch and the tiled VAE. Seams (what an
artist sees): the difference between the last and the first column of a rendered tileable image is
no larger than between neighbouring columns, for `true`, `x` and a chained (sdedit) size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linfusion_engine import Engine, RenderRequest, tiling
from linfusion_engine.strategies import StagePipelines, StageInputs, run_stage
from linfusion_engine.strategies.highres import dilated_convs
from linfusion_engine.schedulers import make_scheduler
from linfusion_engine.registry import ModelRegistry
from linstudio.settings import get_settings


@pytest.fixture(scope="module")
def engine():
    engine = Engine("tiny-sd15", device="cpu", registry=ModelRegistry.from_settings(get_settings()))
    engine.load()
    return engine


def _roll_x(x: torch.Tensor, shift: int) -> torch.Tensor:
    return torch.roll(x, shifts=shift, dims=-1)


def _stage_latents(engine, latents, axes):
    pipe = engine.pipeline
    inputs = StageInputs(prompt="stone wall", negative_prompt="", width=128, height=64, steps=2, guidance=5.0,
                         scheduler=make_scheduler("euler", engine._scheduler_config),
                         generator=torch.Generator().manual_seed(0), axes=axes,
                         pipeline_kwargs={"latents": latents})
    return run_stage(StagePipelines(pipe), inputs)


def test_unet_stage_is_shift_equivariant_when_wrapping_and_not_otherwise(engine):
    latents = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(1))
    for axes, should_wrap in (("x", True), ("", False)):
        plain = _stage_latents(engine, latents, axes)
        shifted = _stage_latents(engine, _roll_x(latents, 4), axes)
        error = (shifted - _roll_x(plain, 4)).abs().max().item()
        if should_wrap:
            assert error < 1e-4, f"axes={axes!r}: shifted input did not give the shifted output ({error})"
        else:
            assert error > 1e-3, "zero padding should break shift-equivariance (the test would be blind)"


def test_vae_decode_and_encode_wrap(engine):
    vae = engine.pipeline.vae
    latents = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        image = tiling.decode(vae, latents, "xy")
        shifted = tiling.decode(vae, _roll_x(latents, 2), "xy")
        assert (shifted - _roll_x(image, 16)).abs().max().item() < 1e-4
        encoded = tiling.encode(vae, image.clamp(-1, 1), "x")
        encoded_shifted = tiling.encode(vae, _roll_x(image.clamp(-1, 1), 16), "x")
    # the encoder's downsamplers pad on one side only, so the shift must be a whole latent step: 16 px
    assert (encoded_shifted - _roll_x(encoded, 2)).abs().max().item() < 1e-4


def test_resize_and_blur_wrap():
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    big = tiling.resize(image, 96, 64, "x")
    assert big.shape == (1, 3, 64, 96)
    assert (tiling.resize(_roll_x(image, 6), 96, 64, "x") - _roll_x(big, 12)).abs().max().item() < 1e-5
    blurred = tiling.gaussian_blur(image, 5, 1.2, "xy")
    assert (tiling.gaussian_blur(_roll_x(image, 7), 5, 1.2, "xy") - _roll_x(blurred, 7)).abs().max().item() < 1e-5
    flat = tiling.resize(image, 96, 64, "")
    assert (tiling.resize(_roll_x(image, 6), 96, 64, "") - _roll_x(flat, 12)).abs().max().item() > 1e-3


def test_dilated_branch_convs_wrap(engine):
    unet = engine.pipeline.unet
    sample = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    hidden = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), tiling.circular_convs([unet], "xy"), dilated_convs(unet, 2):
        out = unet(sample, 500, hidden).sample
        shifted = unet(_roll_x(sample, 4), 500, hidden).sample
    assert (shifted - _roll_x(out, 4)).abs().max().item() < 1e-4
    assert all(conv.dilation == (1, 1) for conv in unet.modules() if isinstance(conv, torch.nn.Conv2d))


def _seams(image) -> tuple[float, float, float, float]:
    """(wrap seam x, neighbouring-column mean, wrap seam y, neighbouring-row mean) of an RGB image."""
    a = np.asarray(image).astype(np.float32)
    columns = np.abs(np.diff(a, axis=1)).mean(axis=(0, 2))
    rows = np.abs(np.diff(a, axis=0)).mean(axis=(1, 2))
    return (float(np.abs(a[:, -1] - a[:, 0]).mean()), float(columns.mean()),
            float(np.abs(a[-1] - a[0]).mean()), float(rows.mean()))


def test_tiled_vae_wraps_like_the_whole_pass(engine):
    vae = engine.pipeline.vae
    latents = torch.randn(1, 4, 16, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        tiled = tiling.decode(vae, latents, "x", tile_px=128)
    assert tiled.shape == (1, 3, 128, 256)
    a = tiled[0].permute(1, 2, 0).numpy()  # (H, W, 3)
    seam = np.abs(a[:, -1] - a[:, 0]).mean()
    neighbours = np.abs(np.diff(a, axis=1)).mean(axis=(0, 2))
    assert seam <= np.percentile(neighbours, 90), (seam, neighbours.mean())


@pytest.mark.parametrize("tileable, strategy, size", [(True, "direct", (128, 64)), ("x", "direct", (128, 64)),
                                                       ("x", "sdedit", (256, 128))])
def test_rendered_tileable_images_have_no_seam(engine, tileable, strategy, size):
    result = engine.render(RenderRequest("mossy stone wall", width=size[0], height=size[1], steps=2,
                                         strategy=strategy, tileable=tileable, seed=3))
    seam_x, columns, seam_y, rows = _seams(result.image)
    assert seam_x <= 1.5 * columns, (seam_x, columns)
    if tileable is True:
        assert seam_y <= 1.5 * rows, (seam_y, rows)
    assert result.metadata["tiling"]["wrap_axes"] == ("xy" if tileable is True else "x")
    assert result.metadata["tileable"] == tileable


def test_tiles_are_normalised_by_the_whole_images_statistics():
    """A GroupNorm run per tile normalises each tile by its own content, so one colour comes out
    differently on either side of a tile border; `whole_image_norms` gives every tile the
    statistics of the whole image (exactly here, where the preview is the whole input)."""
    norm = torch.nn.GroupNorm(2, 4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, 1.5]))
        norm.bias.copy_(torch.tensor([0.0, 0.1, -0.2, 0.3]))
    image = torch.zeros(1, 4, 16, 32)
    image[..., 20:] = 1.0  # (1, 4, 16, 32): a bright object over the right third
    image += 0.1 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = norm(image)
        per_tile = tiling._tiled(norm, image, 1, 4, tile=16, overlap=4, axes="")
        with tiling.whole_image_norms(norm, image, norm):
            shared = tiling._tiled(norm, image, 1, 4, tile=16, overlap=4, axes="")
        restored = norm(image)
    assert (per_tile - whole).abs().max() > 0.5  # the failure this guards against
    assert torch.allclose(shared, whole, atol=1e-5)
    assert torch.equal(restored, whole)  # the module's own forward is back after the block
    # a shrunk preview keeps each region's share of the image
    preview = tiling.preview_of(image, 8)
    assert preview.shape[-2:] == (4, 8) and abs(float(preview.mean() - image.mean())) < 1e-5
