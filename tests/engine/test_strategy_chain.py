"""The strategies on the tiny models: a 64 -> 128 -> 256 chain through sdedit and highres, a
non-power-of-two target, the metadata each render records, and the low-memory mode's equivalence."""

from __future__ import annotations

import numpy as np
import pytest

from linfusion_engine import Engine, RenderRequest
from linfusion_engine.registry import ModelRegistry
from linstudio.settings import get_settings


@pytest.fixture(scope="module")
def sd15():
    engine = Engine("tiny-sd15", device="cpu", registry=ModelRegistry.from_settings(get_settings()))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def sdxl():
    engine = Engine("tiny-sdxl", device="cpu", registry=ModelRegistry.from_settings(get_settings()))
    engine.load()
    return engine


def _stages(metadata):
    return [(s["kind"], s["width"], s["height"], s["strength"]) for s in metadata["stages"]]


def test_sdedit_chain_64_128_256(sd15):
    result = sd15.render(RenderRequest("harbour at dusk", width=256, height=256, steps=2, strategy="sdedit", seed=5))
    assert result.image.size == (256, 256)
    meta = result.metadata
    assert meta["strategy"] == "sdedit" and meta["strategy_requested"] == "sdedit"
    assert _stages(meta) == [("txt2img", 64, 64, None), ("img2img", 128, 128, 0.4), ("img2img", 256, 256, 0.3)]
    # 2 steps at strength 0.3 would run no step at all: the stage runs enough to make one
    assert [s["scheduler_steps"] for s in meta["stages"]] == [2, 3, 4]
    assert [s["attention"] for s in meta["stages"]] == ["softmax", "linear", "linear"]
    assert meta["memory"]["estimate_bytes"] > 0 and meta["low_memory"] is False
    assert meta["memory"]["measured_rss_bytes"] is not None  # sampled RSS on the CPU


def test_sdedit_is_reproducible_and_differs_from_direct(sd15):
    request = dict(prompt="harbour at dusk", width=128, height=128, steps=2, seed=9)
    a = np.asarray(sd15.render(RenderRequest(**request, strategy="sdedit")).image).astype(int)
    b = np.asarray(sd15.render(RenderRequest(**request, strategy="sdedit")).image).astype(int)
    direct = np.asarray(sd15.render(RenderRequest(**request, strategy="direct")).image).astype(int)
    assert np.array_equal(a, b)
    assert np.abs(a - direct).mean() > 1


def test_sdedit_non_power_of_two_lands_on_the_target(sd15):
    result = sd15.render(RenderRequest("harbour", width=200, height=120, steps=2, strategy="sdedit", seed=1))
    assert result.image.size == (200, 120)
    assert _stages(result.metadata)[-1] == ("img2img", 200, 120, 0.4)
    assert "power of two" in result.metadata["strategy_note"]


def test_highres_chain_64_128_256(sdxl):
    result = sdxl.render(RenderRequest("nebula", width=256, height=256, steps=2, strategy="highres", seed=2))
    assert result.image.size == (256, 256)
    meta = result.metadata
    assert _stages(meta) == [("txt2img", 64, 64, None), ("highres", 128, 128, 0.32), ("highres", 256, 256, 0.16)]
    assert [s.get("dilation") for s in meta["stages"]] == [None, 2, 4]
    assert meta["strategy_note"].endswith("exact")


def test_highres_non_power_of_two_refines_at_the_end(sdxl):
    result = sdxl.render(RenderRequest("nebula", width=136, height=136, steps=2, strategy="highres", seed=2))
    assert result.image.size == (136, 136)
    assert [s["kind"] for s in result.metadata["stages"]] == ["txt2img", "highres", "highres", "refine"]
    assert "resize-and-refine" in result.metadata["strategy_note"]


def test_auto_uses_highres_for_sdxl_above_twice_native(sdxl):
    result = sdxl.render(RenderRequest("nebula", width=192, height=96, steps=1, seed=2))
    assert result.metadata["strategy"] == "highres" and result.metadata["strategy_requested"] == "auto"


def test_low_memory_mode_gives_the_same_image(sd15):
    request = dict(prompt="harbour", width=128, height=64, steps=2, seed=4, strategy="sdedit")
    normal = sd15.render(RenderRequest(**request, low_memory=False))
    low = sd15.render(RenderRequest(**request, low_memory=True))
    assert low.metadata["low_memory"] is True and normal.metadata["low_memory"] is False
    difference = np.abs(np.asarray(normal.image).astype(int) - np.asarray(low.image).astype(int))
    assert difference.max() <= 2, difference.max()
    # and the mode is undone afterwards: the UNet and its feed-forwards are plain again
    assert "forward" not in sd15.pipeline.unet.__dict__
    assert not any("forward" in m.__dict__ for m in sd15.pipeline.unet.modules())


def test_low_memory_turns_itself_on_when_the_estimate_does_not_fit(sd15, monkeypatch):
    import linfusion_engine.strategies.render as render

    monkeypatch.setattr(render, "device_budget_bytes", lambda device: 1)
    result = sd15.render(RenderRequest("harbour", width=64, height=64, steps=1, seed=4))
    assert result.metadata["low_memory"] is True and result.metadata["low_memory_requested"] is None


def test_tiled_vae_from_the_forced_tile_size(sd15):
    sd15.vae_tile_px = 128
    try:
        result = sd15.render(RenderRequest("harbour", width=256, height=128, steps=2, strategy="sdedit", seed=4))
    finally:
        del sd15.vae_tile_px
    assert result.image.size == (256, 128)
    assert result.metadata["tiling"]["vae_tiled_sizes"] == ["256x128"]
    assert result.metadata["tiling"]["vae_tile_px"] == 128


@pytest.mark.parametrize("field, value, message", [("strategy", "tiled", "unknown strategy"),
                                                   ("tileable", "z", "tileable must be"),
                                                   ("low_memory", "yes", "low_memory must be")])
def test_bad_fields_fail_before_loading(field, value, message):
    engine = Engine("tiny-sd15", device="cpu", registry=ModelRegistry.from_settings(get_settings()))
    with pytest.raises(ValueError, match=message):
        engine.render(RenderRequest("x", **{field: value}))
    assert not engine.is_loaded
