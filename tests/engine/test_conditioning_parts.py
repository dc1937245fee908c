"""ControlNet linear attention, IP-Adapter with LinFusion in both loading orders, LoRA apply and undo.

Tiny models on the CPU, 64 px, 2 steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from linfusion_engine.conditioning.controlnet import (
    ControlNetBank,
    ControlNetLayoutError,
    controlnet_self_attention,
    is_linear,
    linear_processors,
)
from linfusion_engine.conditioning.inputs import IpAdapterInput
from linfusion_engine.conditioning.lora import LoraError, apply_loras, lora_file
from linfusion_engine.engine import Engine, RenderRequest
from linfusion_engine.linfusion import LinFusion, is_mounted
from linfusion_engine.processor import GeneralizedLinearAttnProcessor
from linfusion_engine.registry import ModelRegistry

STEPS = 2


@pytest.fixture(scope="session")
def cond_registry(session_root) -> ModelRegistry:
    home = session_root / "home"
    return ModelRegistry(home / "models.yaml", home / "models")


def _engine(registry, model="tiny-sd15") -> Engine:
    engine = Engine(model, registry=registry, device="cpu")
    engine.load()
    return engine


def _perturb_mlps(linfusion: LinFusion, seed: int = 5) -> None:
    """Give the MLPs' last layers non-zero weights, so trained layers differ from weightless ones."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for processor in linfusion.processors:
            for mlp in (processor.to_q_, processor.to_k_):
                mlp[3].weight.copy_(torch.randn(mlp[3].weight.shape, generator=generator) * 0.2)


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _reference(seed=3, size=40):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


# -- ControlNet ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_controlnet_self_attention_is_linear_with_its_own_projections_and_linfusion_mlps(cond_registry, model):
    engine = _engine(cond_registry, model)
    bank = ControlNetBank(cond_registry, engine.entry, device=engine.device, dtype=engine.dtype)
    controlnet = bank.get("canny")
    layers = controlnet_self_attention(controlnet)
    assert layers and all(name.startswith(("down_blocks", "mid_block")) for name, _ in layers)
    with torch.no_grad():  # make the ControlNet's attn1 differ from the UNet's (from_unet copies them)
        for _, attn in layers:
            attn.to_q.weight.mul_(1.5)
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, engine.pipeline.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    cond = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    extra = {}
    if model == "tiny-sdxl":
        extra = {"added_cond_kwargs": {"text_embeds": torch.zeros(1, 32), "time_ids": torch.zeros(1, 6)}}

    def residuals():
        with torch.no_grad():
            down, mid = controlnet(sample, 10, text, cond, return_dict=False, **extra)
        return torch.cat([d.flatten() for d in down] + [mid.flatten()])

    softmax_before = residuals()
    assert bank.set_attention("canny", True, engine.linfusion) == "linear" and is_linear(controlnet)
    by_name = dict(zip(engine.linfusion.module_names, engine.linfusion.processors))
    for name, attn in layers:
        processor = attn.processor
        assert isinstance(processor, GeneralizedLinearAttnProcessor)
        assert torch.equal(processor.to_q.weight, attn.to_q.weight)  # the ControlNet's own, not the UNet's
        assert not torch.equal(processor.to_q.weight, engine.pipeline.unet.get_submodule(name).to_q.weight)
        assert torch.equal(processor.to_out[0].bias, attn.to_out[0].bias)
        assert processor.to_q_ is by_name[name].to_q_ and processor.to_k_ is by_name[name].to_k_  # shared
    linear = residuals()
    assert not torch.allclose(linear, softmax_before, atol=1e-4)
    # The switch: softmax again, bit for bit.
    assert bank.set_attention("canny", False, engine.linfusion) == "softmax" and not is_linear(controlnet)
    assert torch.equal(residuals(), softmax_before)
    # No LinFusion loaded (linfusion: none) also means softmax.
    assert bank.set_attention("canny", True, None) == "softmax"
    engine.close()


def test_controlnet_for_another_base_model_is_a_clear_error(cond_registry):
    sd15 = _engine(cond_registry, "tiny-sd15")
    sdxl = _engine(cond_registry, "tiny-sdxl")
    controlnet = ControlNetBank(cond_registry, sd15.entry, device="cpu", dtype=torch.float32).get("depth")
    with pytest.raises(ControlNetLayoutError, match=r"ControlNet layer down_blocks\.0\.attentions\.0\.transformer_blocks"
                                                    r"\.0\.attn1 \(32 channels.*no matching LinFusion layer"):
        linear_processors(controlnet, sdxl.linfusion)


# -- IP-Adapter ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_ip_adapter_and_linfusion_hold_whichever_is_loaded_first(cond_registry, model):
    request = RenderRequest("a lighthouse", seed=4, width=64, height=64, steps=STEPS, attention="linear",
                            ip_adapter=IpAdapterInput([_reference()], 0.8))
    plain = RenderRequest("a lighthouse", seed=4, width=64, height=64, steps=STEPS, attention="linear")

    # LinFusion first (the engine mounts it at load), IP-Adapter second.
    first = _engine(cond_registry, model)
    _perturb_mlps(first.linfusion)
    plain_before = first.render(plain).image
    first.conditioning_state().load_ip_adapter(first.pipeline, first.linfusion)
    unet = first.pipeline.unet
    mounted = [unet.get_submodule(name).processor for name in first.linfusion.module_names]
    assert all(p is q for p, q in zip(mounted, first.linfusion.processors))  # the trained layers, not no-arg ones
    with_ip_first = first.render(request).image

    # IP-Adapter first (on softmax attention), LinFusion mounted after it.
    second = _engine(cond_registry, model)
    _perturb_mlps(second.linfusion)
    LinFusion.unmount(second.pipeline.unet)
    second.conditioning_state().load_ip_adapter(second.pipeline, None)
    second.linfusion.mount(second.pipeline.unet)
    with_ip_second = second.render(request).image

    assert np.array_equal(_pixels(with_ip_first), _pixels(with_ip_second))
    assert np.abs(_pixels(with_ip_first) - _pixels(plain_before)).mean() > 1.0  # the references steer
    # While attached, attn2 runs the IP-Adapter processors; detached after the render.
    assert unet.encoder_hid_proj is None
    assert np.array_equal(_pixels(first.render(plain).image), _pixels(plain_before))
    first.close()
    second.close()


def test_ip_adapter_attaches_its_processors_only_while_used(cond_registry):
    engine = _engine(cond_registry)
    state = engine.conditioning_state().load_ip_adapter(engine.pipeline, engine.linfusion)
    unet = engine.pipeline.unet
    cross = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    assert not any("IPAdapter" in type(unet.attn_processors[n]).__name__ for n in cross)
    state.attach(0.5)
    assert all("IPAdapter" in type(unet.attn_processors[n]).__name__ for n in cross)
    assert all(p.scale == [0.5] for p in state.ip_processors.values())
    assert is_mounted(unet)
    state.detach()
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    engine.close()


# -- LoRA ------------------------------------------------------------------------------------------
def _kohya_attn1_lora(path, unet, rank=2, seed=7):
    """A kohya-format LoRA on attn1.to_q/to_v only, with alpha."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in unet.named_modules():
        if name.endswith(("attn1.to_q", "attn1.to_v")):
            stem = "lora_unet_" + name.replace(".", "_")
            tensors[f"{stem}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=generator)
            tensors[f"{stem}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=generator)
            tensors[f"{stem}.alpha"] = torch.tensor(float(rank) / 2)
    save_file(tensors, str(path))
    return path


def test_lora_changes_the_output_and_unloading_restores_it_exactly(cond_registry):
    engine = _engine(cond_registry)
    request = RenderRequest("a castle", seed=2, width=64, height=64, steps=STEPS, attention="linear")
    before = engine.render(request)
    unet_state = {k: v.clone() for k, v in engine.pipeline.unet.state_dict().items()}
    lf_state = {k: v.clone() for k, v in engine.linfusion.state_dict().items()}
    styled = engine.render(RenderRequest(**{**request.__dict__, "loras": [("tiny-style", 1.0)]}))
    assert np.abs(_pixels(styled.image) - _pixels(before.image)).mean() > 1.0
    assert styled.metadata["conditioning"]["lora"][0] == {"name": "tiny-style", "scale": 1.0,
                                                           "file": "builtin:tiny-sd15-lora-tiny-style"}
    after = engine.render(request)
    assert np.array_equal(_pixels(after.image), _pixels(before.image))
    assert all(torch.equal(v, unet_state[k]) for k, v in engine.pipeline.unet.state_dict().items())
    assert all(torch.equal(v, lf_state[k]) for k, v in engine.linfusion.state_dict().items())
    engine.close()


def test_lora_attn1_part_reaches_the_weights_linfusion_uses(cond_registry, tmp_path):
    engine = _engine(cond_registry)
    _perturb_mlps(engine.linfusion)
    path = _kohya_attn1_lora(tmp_path / "attn1.safetensors", engine.pipeline.unet)
    processor = engine.linfusion.processors[0]
    host = engine.pipeline.unet.get_submodule(engine.linfusion.module_names[0])
    before_proc, before_host = processor.to_q.weight.clone(), host.to_q.weight.clone()
    patch = apply_loras(engine.pipeline, [("attn1", path, 0.5)], engine.linfusion)
    delta_proc = processor.to_q.weight - before_proc
    delta_host = host.to_q.weight - before_host
    assert delta_proc.abs().max() > 0 and torch.allclose(delta_proc, delta_host, atol=1e-6)
    assert patch.linfusion_patched == patch.layers_patched  # every layer is an attn1 projection here
    patch.restore()
    assert torch.equal(processor.to_q.weight, before_proc) and torch.equal(host.to_q.weight, before_host)

    # Through a render with LinFusion mounted: an attn1-only LoRA must change the image.
    request = RenderRequest("a tower", seed=1, width=64, height=64, steps=STEPS, attention="linear")
    plain = engine.render(request).image
    patch = apply_loras(engine.pipeline, [("attn1", path, 1.0)], engine.linfusion)
    try:
        assert is_mounted(engine.pipeline.unet)
        styled = engine.render(request).image
    finally:
        patch.restore()
    assert np.abs(_pixels(styled) - _pixels(plain)).mean() > 1.0
    engine.close()


def test_lora_for_another_model_is_refused_and_nothing_stays_applied(cond_registry, tmp_path):
    engine = _engine(cond_registry)
    good = lora_file(cond_registry, engine.entry, "tiny-style")
    bad = tmp_path / "other.safetensors"
    save_file({"unet.up_blocks.9.attn1.to_q.lora_A.weight": torch.zeros(2, 4),
               "unet.up_blocks.9.attn1.to_q.lora_B.weight": torch.zeros(4, 2)}, str(bad))
    state = {k: v.clone() for k, v in engine.pipeline.unet.state_dict().items()}
    with pytest.raises(LoraError, match=r"'unet\.up_blocks\.9\.attn1\.to_q' names no layer"):
        apply_loras(engine.pipeline, [("good", good, 1.0), ("bad", bad, 1.0)], engine.linfusion)
    assert all(torch.equal(v, state[k]) for k, v in engine.pipeline.unet.state_dict().items())
    engine.close()
