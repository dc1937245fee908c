"""Engine.render with conditioning: each kind alone and all together, text-to-image and chains.

Tiny models on the CPU, 64-128 px, 2 steps; one engine per family for the module.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from linfusion_engine.conditioning.inputs import ControlInput, IpAdapterInput, image_sha256
from linfusion_engine.engine import Engine, RenderRequest
from linfusion_engine.registry import ModelRegistry

STEPS = 2


@pytest.fixture(scope="module")
def engines(session_root):
    home = session_root / "home"
    registry = ModelRegistry(home / "models.yaml", home / "models")
    loaded = {name: Engine(name, registry=registry, device="cpu") for name in ("tiny-sd15", "tiny-sdxl")}
    yield loaded
    for engine in loaded.values():
        engine.close()


def _noise_image(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _edges(width: int, height: int) -> Image.Image:
    """A canny-like map: white lines on black."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[height // 3, :] = 255
    array[:, width // 2] = 255
    return Image.fromarray(array)


def _half_mask(width: int, height: int) -> Image.Image:
    """White (repaint) on the top half, black (keep) on the bottom half."""
    array = np.zeros((height, width), dtype=np.uint8)
    array[: height // 2] = 255
    return Image.fromarray(array, mode="L")


def _diff(a, b) -> float:
    b = b.resize(a.size) if b.size != a.size else b
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


KINDS = {
    "controlnet": lambda: {"controlnets": [("canny", _edges(96, 96), 1.0)]},
    "two_controlnets": lambda: {"controlnets": [ControlInput("canny", _edges(64, 64), 0.8),
                                                ControlInput("depth", _noise_image(9, 32, 32), 0.5)]},
    "ip_adapter": lambda: {"ip_adapter": IpAdapterInput([_noise_image(1, 40, 40), _noise_image(2, 48, 32)], 1.0)},
    "lora": lambda: {"loras": [("tiny-style", 1.0)]},
    "init_image": lambda: {"init_image": _noise_image(3, 160, 120), "strength": 0.6},
    "inpaint": lambda: {"init_image": _noise_image(4, 64, 64), "strength": 0.9, "mask": _half_mask(64, 64)},
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_alone_changes_the_render_and_is_recorded(engines, kind):
    engine = engines["tiny-sd15"]
    base = dict(prompt="harbour at night", seed=11, width=64, height=64, steps=STEPS)
    plain = engine.render(RenderRequest(**base))
    conditioned = engine.render(RenderRequest(**base, **KINDS[kind]()))
    assert _diff(conditioned.image, plain.image) > 1.0
    record = conditioned.metadata["conditioning"]
    feature = {"two_controlnets": "controlnet", "inpaint": "init_image"}.get(kind, kind)
    assert feature in record
    assert set(record) - {feature, "stages", "controlnet_linear_attention", "lora_layers"} == set()
    # Same request, same image: conditioning is deterministic.
    again = engine.render(RenderRequest(**base, **KINDS[kind]()))
    assert np.array_equal(np.asarray(again.image), np.asarray(conditioned.image))


def test_metadata_records_every_input_with_its_hash_and_settings(engines):
    engine = engines["tiny-sd15"]
    edges, ref, init, mask = _edges(64, 64), _noise_image(5, 40, 40), _noise_image(6, 64, 64), _half_mask(64, 64)
    result = engine.render(RenderRequest(
        "x", seed=1, width=64, height=64, steps=STEPS,
        controlnets=[ControlInput("canny", edges, 0.7, source={"path": "/maps/edges.png", "sha256": "ab"})],
        ip_adapter=IpAdapterInput([ref], 0.6), init_image=init, strength=0.5, mask=mask,
        loras=[("tiny-style", 0.3)]))
    record = result.metadata["conditioning"]
    assert record["controlnet"] == [{"type": "canny", "scale": 0.7, "model": "builtin:tiny-sd15-controlnet-canny",
                                     "image": {"sha256": image_sha256(edges), "width": 64, "height": 64,
                                               "source": {"path": "/maps/edges.png", "sha256": "ab"}}}]
    assert record["ip_adapter"]["scale"] == 0.6 and record["ip_adapter"]["images"][0]["sha256"] == image_sha256(ref)
    assert record["init_image"]["strength"] == 0.5
    assert record["init_image"]["image"]["sha256"] == image_sha256(init)
    assert record["init_image"]["mask"]["sha256"] == image_sha256(mask)
    assert record["lora"][0]["name"] == "tiny-style" and record["lora"][0]["scale"] == 0.3
    assert record["stages"] == [{"width": 64, "height": 64, "from_init_image": True, "strength": 0.5,
                                 "controlnet_attention": ["softmax"], "masked": True}]
    plain = engine.render(RenderRequest("x", seed=1, width=64, height=64, steps=STEPS))
    assert plain.metadata["conditioning"] == {}


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_inpainting_keeps_the_unmasked_area_of_the_input(engines, model):
    engine = engines[model]
    init, mask = _noise_image(7, 64, 64), _half_mask(64, 64)
    result = engine.render(RenderRequest("sky", seed=3, width=64, height=64, steps=STEPS, init_image=init,
                                         strength=1.0, mask=mask))
    out, src = np.asarray(result.image, dtype=np.float64), np.asarray(init, dtype=np.float64)
    assert np.abs(out[32:] - src[32:]).mean() < 1.0  # kept: the paint-over's own pixels
    assert np.abs(out[:32] - src[:32]).mean() > 10.0  # repainted


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_all_kinds_together_text_to_image(engines, model):
    engine = engines[model]
    result = engine.render(RenderRequest(
        "a ruined temple", seed=5, width=64, height=64, steps=STEPS,
        controlnets=[("canny", _edges(64, 64), 1.0), ("depth", _noise_image(8, 64, 64), 0.4)],
        ip_adapter=IpAdapterInput([_noise_image(9, 40, 40)], 0.7), loras=[("tiny-style", 0.8)]))
    assert result.image.size == (64, 64)
    assert set(result.metadata["conditioning"]) >= {"controlnet", "ip_adapter", "lora"}


@pytest.mark.parametrize("model, strategy", [("tiny-sd15", "sdedit"), ("tiny-sdxl", "highres")])
def test_all_kinds_together_through_a_chain(engines, model, strategy):
    """Control map and mask follow every stage's size; the chain starts from the init image."""
    engine = engines[model]
    init, mask = _noise_image(10, 96, 96), _half_mask(96, 96)
    result = engine.render(RenderRequest(
        "a ruined temple", seed=5, width=256, height=256, steps=STEPS, strategy=strategy, attention="linear",
        controlnets=[("canny", _edges(200, 200), 1.0)], ip_adapter=IpAdapterInput([_noise_image(9, 40, 40)], 0.7),
        loras=[("tiny-style", 0.8)], init_image=init, strength=0.8, mask=mask))
    stages = result.metadata["conditioning"]["stages"]
    assert len(stages) >= 2 and stages[-1]["width"] == 256
    assert [s["width"] for s in stages] == [s["width"] for s in result.metadata["stages"]]
    assert stages[0].get("from_init_image") and not any(s.get("from_init_image") for s in stages[1:])
    assert all(s["masked"] for s in stages)
    # The ControlNet runs linear above the native size, its own softmax at the native-size base.
    assert [s["controlnet_attention"] for s in stages] == [
        ["softmax" if s["width"] * s["height"] <= 64 * 64 else "linear"] for s in stages]
    assert stages[-1]["controlnet_attention"] == ["linear"]
    out = np.asarray(result.image, dtype=np.float64)
    kept = np.asarray(init.resize((256, 256), Image.Resampling.LANCZOS), dtype=np.float64)
    assert np.abs(out[128:] - kept[128:]).mean() < 1.0


def test_controlnet_switch_leaves_it_softmax(engines):
    engine = engines["tiny-sd15"]
    base = dict(prompt="a bridge", seed=2, width=128, height=128, steps=STEPS, attention="linear", strategy="direct",
                controlnets=[("canny", _edges(128, 128), 1.0)])
    native = engine.render(RenderRequest(**{**base, "width": 64, "height": 64,
                                            "controlnets": [("canny", _edges(64, 64), 1.0)]}))
    assert native.metadata["conditioning"]["stages"][0]["controlnet_attention"] == ["softmax"]  # at native size
    linear = engine.render(RenderRequest(**base))
    softmax = engine.render(RenderRequest(**base, controlnet_linear=False))
    assert linear.metadata["conditioning"]["stages"][0]["controlnet_attention"] == ["linear"]
    assert softmax.metadata["conditioning"]["stages"][0]["controlnet_attention"] == ["softmax"]
    assert softmax.metadata["conditioning"]["controlnet_linear_attention"] is False
    assert _diff(linear.image, softmax.image) > 0.0
    assert linear.metadata["attention"] == "linear" == softmax.metadata["attention"]


def test_unknown_controlnet_type_fails_naming_the_model_before_rendering(engines):
    engine = engines["tiny-sd15"]
    with pytest.raises(ValueError, match="model 'tiny-sd15' has no ControlNet for control type 'openpose'"):
        engine.render(RenderRequest("x", width=64, height=64, steps=STEPS,
                                    controlnets=[("openpose", _edges(64, 64), 1.0)]))


def test_tileable_renders_wrap_the_controlnet_convolutions_too(engines):
    """The stage runner wraps the UNet's convs; ConditionedContext.run wraps the ControlNets' as well."""
    import torch

    from linfusion_engine.tiling import circular_convs

    engine = engines["tiny-sd15"]
    controlnet = engine.conditioning_state().controlnets.get("canny")
    conv = controlnet.controlnet_cond_embedding.conv_in
    seen = []
    handle = conv.register_forward_hook(lambda module, args, out: seen.append("_conv_forward" in module.__dict__))
    try:
        engine.render(RenderRequest("moss", seed=1, width=64, height=64, steps=STEPS, tileable=True,
                                    controlnets=[("canny", _edges(64, 64), 1.0)]))
        wrapped = list(seen)
        seen.clear()
        engine.render(RenderRequest("moss", seed=1, width=64, height=64, steps=STEPS,
                                    controlnets=[("canny", _edges(64, 64), 1.0)]))
    finally:
        handle.remove()
    assert wrapped and all(wrapped) and seen and not any(seen)

    # Wrapped, the ControlNet is shift-equivariant: rolling its inputs rolls its residuals.
    engine.conditioning_state().controlnets.set_attention("canny", True, engine.linfusion)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)  # (1, 4, h, w)
    cond = torch.rand(1, 3, 64, 64, generator=generator)  # (1, 3, H, W)
    text = torch.randn(1, 77, 32, generator=generator)

    def mid(sample, cond):
        with torch.no_grad(), circular_convs([controlnet], "xy"):
            return controlnet(sample, 10, text, cond, return_dict=False)[1]  # (1, 64, h/2, w/2)

    shifted = mid(torch.roll(sample, 2, dims=-1), torch.roll(cond, 16, dims=-1))
    assert torch.allclose(shifted, torch.roll(mid(sample, cond), 1, dims=-1), atol=1e-4)


def test_low_memory_mode_renders_every_kind_of_conditioning_the_same(engines):
    engine = engines["tiny-sdxl"]
    request = dict(prompt="x", seed=1, width=64, height=64, steps=STEPS,
                   controlnets=[("canny", _edges(64, 64), 1.0)], ip_adapter=IpAdapterInput([_noise_image(1, 32, 32)], 0.5),
                   init_image=_noise_image(2, 64, 64), strength=0.8, mask=_half_mask(64, 64), loras=[("tiny-style", 1.0)])
    normal = engine.render(RenderRequest(**request, low_memory=False))
    saving = engine.render(RenderRequest(**request, low_memory=True))
    assert saving.metadata["low_memory"] is True
    assert _diff(saving.image, normal.image) < 0.5
