"""LinFusion: published layout, strict loading, mount/unmount, save/load round trips."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import load_file, save_file

from linfusion_engine.attention import generalized_linear_attention
from linfusion_engine.linfusion import (
    WEIGHTS_NAME,
    LinFusion,
    LinFusionLayoutError,
    LinFusionMountError,
    LinFusionWeightsError,
    is_mounted,
)
from linfusion_engine.processor import GeneralizedLinearAttnProcessor
from linfusion_engine.registry import ModelNotAvailableError

# Real configs (from the published model folders), built on the meta device: shapes only.
SD15_UNET_CONFIG = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "attention_head_dim": 8, "cross_attention_dim": 768, "norm_num_groups": 32,
}
SDXL_UNET_CONFIG = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048, "use_linear_projection": True, "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
}
# A tiny SD-1.5-shaped UNet: self-attention at the highest resolution, 4 attn1 layers in all.
TINY_UNET_CONFIG = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
    "block_out_channels": (32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32, "norm_num_groups": 8, "attention_head_dim": 2,
}
FIRST_SD15_ENTRY = {"dim_n": 320, "heads": 8, "module_name": "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
                    "projection_mid_dim": None}


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNET_CONFIG).eval()


def unet_inputs(seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([10, 500]), torch.randn(2, 5, 32, generator=gen)


@torch.no_grad()
def run(unet, inputs=None) -> torch.Tensor:
    return unet(*(inputs or unet_inputs())).sample


def perturbed(linfusion: LinFusion, seed: int = 3) -> LinFusion:
    """Give the zero-initialised MLP outputs some weight, as training would."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for processor in linfusion.processors:
            for mlp in (processor.to_q_, processor.to_k_):
                mlp[3].weight.normal_(0, 0.3)
                mlp[3].bias.normal_(0, 0.3)
    return linfusion


@pytest.fixture(scope="module")
def sd15_meta_unet():
    with torch.device("meta"):
        return UNet2DConditionModel(**SD15_UNET_CONFIG)


@pytest.fixture(scope="module")
def sdxl_meta_unet():
    with torch.device("meta"):
        return UNet2DConditionModel(**SDXL_UNET_CONFIG)


# -- published layout ------------------------------------------------------------------------------
def test_sd15_layout_is_the_published_one(sd15_meta_unet):
    modules_list = LinFusion.modules_list_for_unet(sd15_meta_unet)
    assert len(modules_list) == 16
    assert modules_list[0] == FIRST_SD15_ENTRY
    names = [entry["module_name"] for entry in modules_list]
    assert names[:6] == [f"down_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1" for b in range(3) for a in range(2)]
    assert names[6:15] == [f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1" for b in (1, 2, 3) for a in range(3)]
    assert names[15] == "mid_block.attentions.0.transformer_blocks.0.attn1"
    assert [entry["dim_n"] for entry in modules_list] == [320, 320, 640, 640, 1280, 1280] + [1280] * 3 + [640] * 3 + [320] * 3 + [1280]
    assert {entry["heads"] for entry in modules_list} == {8}
    assert {entry["projection_mid_dim"] for entry in modules_list} == {None}


def test_sdxl_layout_is_the_published_one(sdxl_meta_unet):
    modules_list = LinFusion.modules_list_for_unet(sdxl_meta_unet)
    assert len(modules_list) == 70
    assert modules_list[0] == {"dim_n": 640, "heads": 10, "projection_mid_dim": 40,
                               "module_name": "down_blocks.1.attentions.0.transformer_blocks.0.attn1"}
    blocks = [entry["module_name"].split(".attentions")[0] for entry in modules_list]
    assert blocks == (["down_blocks.1"] * 4 + ["down_blocks.2"] * 20 + ["up_blocks.0"] * 30 + ["up_blocks.1"] * 6
                      + ["mid_block"] * 10)
    assert modules_list[-1]["module_name"] == "mid_block.attentions.0.transformer_blocks.9.attn1"
    for entry in modules_list:
        assert (entry["heads"], entry["projection_mid_dim"]) == {640: (10, 40), 1280: (20, 80)}[entry["dim_n"]]


def test_projection_mid_dim_can_be_overridden(sdxl_meta_unet):
    assert {entry["projection_mid_dim"] for entry in LinFusion.modules_list_for_unet(sdxl_meta_unet, 64)} == {64}


def test_container_has_the_published_keys(sd15_meta_unet):
    with torch.device("meta"):
        linfusion = LinFusion(LinFusion.modules_list_for_unet(sd15_meta_unet))
    keys = list(linfusion.state_dict())
    assert len(keys) == 16 * 17
    assert keys[:5] == ["0.to_q.weight", "0.to_k.weight", "0.to_v.weight", "0.to_out.0.weight", "0.to_out.0.bias"]
    assert {"15.to_q_.3.bias", "15.to_k_.1.weight"} <= set(keys)
    assert linfusion.state_dict()["0.to_q_.0.weight"].shape == (320, 320)


# -- from_unet, mount, unmount ---------------------------------------------------------------------
def test_from_unet_copies_the_attention_and_zeroes_the_mlp_outputs():
    unet = tiny_unet()
    linfusion = LinFusion.from_unet(unet)
    attn = unet.get_submodule("up_blocks.1.attentions.1.transformer_blocks.0.attn1")
    processor = linfusion.processors[2]
    assert linfusion.module_names[2] == "up_blocks.1.attentions.1.transformer_blocks.0.attn1"
    assert torch.equal(processor.to_k.weight, attn.to_k.weight)
    assert torch.equal(processor.to_out[0].bias, attn.to_out[0].bias)
    assert not processor.to_q_[3].weight.any() and not processor.to_k_[3].bias.any()
    assert processor.to_q_[0].weight.any()
    again = LinFusion.from_unet(unet)  # seeded: the same bytes every time
    assert all(torch.equal(a, b) for a, b in zip(linfusion.state_dict().values(), again.state_dict().values()))


def test_from_unet_mounted_equals_the_weightless_processor():
    # x + MLP(x) = x and the same projections: exactly what the no-argument processor computes,
    # which is also what a UNet falls back to after `load_ip_adapter` rebuilds the processors.
    unet = tiny_unet()
    LinFusion.from_unet(unet).mount(unet)
    mounted = run(unet)
    rebuilt = {name: type(proc)() if name.endswith("attn1.processor") else proc
               for name, proc in unet.attn_processors.items()}
    unet.set_attn_processor(rebuilt)
    torch.testing.assert_close(run(unet), mounted, rtol=1e-5, atol=1e-6)


def test_mount_then_unmount_is_bit_identical():
    unet = tiny_unet()
    before = run(unet)
    originals = unet.attn_processors
    linfusion = perturbed(LinFusion.from_unet(unet))
    linfusion.mount(unet)
    assert is_mounted(unet)
    assert sum(isinstance(p, GeneralizedLinearAttnProcessor) for p in unet.attn_processors.values()) == 4
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_.3.weight" in unet.state_dict()
    assert not torch.allclose(run(unet), before, atol=1e-3)
    LinFusion.unmount(unet)
    assert not is_mounted(unet)
    assert unet.attn_processors == originals
    assert not any(".processor." in key for key in unet.state_dict())
    assert torch.equal(run(unet), before)


def test_unmount_restores_after_load_ip_adapter_style_rebuild():
    unet = tiny_unet()
    before = run(unet)
    LinFusion.from_unet(unet).mount(unet)
    unet.set_attn_processor({name: type(proc)() for name, proc in unet.attn_processors.items()})
    LinFusion.unmount(unet)
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    assert torch.equal(run(unet), before)


def test_mounted_layer_is_the_functional_core_applied_by_hand():
    unet = tiny_unet()
    linfusion = perturbed(LinFusion.from_unet(unet))
    linfusion.mount(unet)
    name = "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    attn, processor = unet.get_submodule(name), linfusion.processors[linfusion.module_names.index(name)]
    seen = {}
    handle = attn.register_forward_hook(lambda module, args, output: seen.update(x=args[0], out=output))
    run(unet)
    handle.remove()
    x = seen["x"]  # (B, N, C)
    batch, tokens, channels = x.shape
    heads = attn.heads
    with torch.no_grad():
        q = processor.to_q(x + processor.to_q_(x)).view(batch, tokens, heads, -1).transpose(1, 2)  # (B, H, N, d)
        k = processor.to_k(x + processor.to_k_(x)).view(batch, tokens, heads, -1).transpose(1, 2)  # (B, H, N, d)
        v = processor.to_v(x).view(batch, tokens, heads, -1).transpose(1, 2)  # (B, H, N, d)
        out = generalized_linear_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, channels)  # (B, N, C)
        torch.testing.assert_close(seen["out"], processor.to_out[0](out), rtol=1e-5, atol=1e-6)


def test_mounting_twice_or_unmounting_nothing_is_an_error():
    unet = tiny_unet()
    linfusion = LinFusion.from_unet(unet)
    with pytest.raises(LinFusionMountError, match="not mounted"):
        LinFusion.unmount(unet)
    linfusion.mount(unet)
    with pytest.raises(LinFusionMountError, match="already mounted"):
        linfusion.mount(unet)


def test_mounting_on_a_different_layout_is_an_error():
    unet = tiny_unet()
    config = dict(TINY_UNET_CONFIG, block_out_channels=(32, 48), attention_head_dim=4)
    other = UNet2DConditionModel(**config).eval()
    with pytest.raises(LinFusionLayoutError) as excinfo:
        LinFusion.from_unet(other).mount(unet)
    message = str(excinfo.value)
    assert "module 3 (mid_block.attentions.0.transformer_blocks.0.attn1): dim_n 48, heads 4" in message
    assert "64 channels, 2 heads" in message
    assert not is_mounted(unet)
    entries = LinFusion.modules_list_for_unet(unet)
    renamed = [dict(entries[0], module_name="down_blocks.0.attentions.9.transformer_blocks.0.attn1")] + entries[1:]
    with pytest.raises(LinFusionLayoutError) as excinfo:
        LinFusion(renamed).mount(unet)
    assert "module 0 (down_blocks.0.attentions.9.transformer_blocks.0.attn1): the UNet has no" in str(excinfo.value)
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1 has no entry in modules_list" in str(excinfo.value)


def test_mount_casts_to_the_unet_dtype_and_follows_it():
    unet = tiny_unet().to(torch.bfloat16)
    linfusion = LinFusion.from_unet(unet)
    assert linfusion.dtype == torch.bfloat16
    linfusion = perturbed(LinFusion.from_unet(tiny_unet()))  # fp32
    warnings: list[str] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    diffusers_logging.get_logger("diffusers").addHandler(handler)
    try:
        linfusion.mount(unet)
        linfusion.to(torch.float16).to(torch.bfloat16)
    finally:
        diffusers_logging.get_logger("diffusers").removeHandler(handler)
    assert warnings == []  # ModelMixin.to would warn about "modules kept in float32: []" each time
    assert linfusion.dtype == torch.bfloat16
    x, t, text = unet_inputs()
    assert run(unet, (x.bfloat16(), t, text.bfloat16())).dtype == torch.bfloat16
    unet.to(torch.float32)
    assert linfusion.dtype == torch.float32  # the mounted processors are the container's own modules


def test_training_the_mounted_unet_trains_the_container():
    # Distillation: gradients reach the LinFusion weights (the zero-initialised MLP outputs
    # included) and the host layers' own, now unused, projections get none.
    unet = tiny_unet()
    linfusion = LinFusion.from_unet(unet)
    linfusion.mount(unet)
    unet(*unet_inputs()).sample.square().mean().backward()
    for processor in linfusion.processors:
        assert processor.to_q_[3].weight.grad.abs().sum() > 0
        assert processor.to_v.weight.grad.abs().sum() > 0
    assert unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1").to_q.weight.grad is None


# -- saving and loading -----------------------------------------------------------------------------
def test_save_and_load_round_trip_gives_identical_outputs(tmp_path):
    unet = tiny_unet()
    linfusion = perturbed(LinFusion.from_unet(unet))
    linfusion.mount(unet)
    expected = run(unet)
    LinFusion.unmount(unet)
    folder = linfusion.save_pretrained(tmp_path / "lf")
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "LinFusion" and config["modules_list"] == linfusion.config.modules_list
    assert len(load_file(str(folder / WEIGHTS_NAME))) == 4 * 17
    loaded = LinFusion.from_pretrained(folder)
    loaded.mount(unet)
    assert torch.equal(run(unet), expected)


def write_published_folder(folder: Path, linfusion: LinFusion) -> Path:
    """A folder as upstream publishes it: hand-written config, fp16 tensors."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "LinFusion", "_diffusers_version": "0.30.0",
        "modules_list": [dict(entry) for entry in linfusion.config.modules_list]}))
    save_file({k: v.half().contiguous() for k, v in linfusion.state_dict().items()}, str(folder / WEIGHTS_NAME))
    return folder


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_loads_a_published_fp16_folder_into_the_dtype_asked(tmp_path, dtype):
    linfusion = perturbed(LinFusion.from_unet(tiny_unet()))
    folder = write_published_folder(tmp_path / "LinFusion-tiny", linfusion)
    loaded = LinFusion.from_pretrained(folder, torch_dtype=dtype)
    assert loaded.dtype == (dtype or torch.float32)
    for key, value in linfusion.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.half().to(dtype or torch.float32)), key


def test_loads_a_hub_id_from_the_local_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotAvailableError, match="not in the local Hugging Face cache"):
        LinFusion.from_pretrained("Yuanshi/LinFusion-tiny")
    repo = tmp_path / "hub" / "models--Yuanshi--LinFusion-tiny"
    linfusion = perturbed(LinFusion.from_unet(tiny_unet()))
    write_published_folder(repo / "snapshots" / "0123abc", linfusion)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    loaded = LinFusion.from_pretrained("Yuanshi/LinFusion-tiny")
    assert torch.equal(loaded.state_dict()["3.to_k_.3.bias"], linfusion.state_dict()["3.to_k_.3.bias"].half().float())


@pytest.fixture
def saved_folder(tmp_path) -> Path:
    return LinFusion.from_unet(tiny_unet()).save_pretrained(tmp_path / "lf")


def rewrite_tensors(folder: Path, edit) -> None:
    tensors = load_file(str(folder / WEIGHTS_NAME))
    edit(tensors)
    save_file(tensors, str(folder / WEIGHTS_NAME))


def test_missing_tensor_names_module_and_key(saved_folder):
    rewrite_tensors(saved_folder, lambda t: t.pop("2.to_q_.1.bias"))
    with pytest.raises(LinFusionWeightsError) as excinfo:
        LinFusion.from_pretrained(saved_folder)
    assert ("module 2 (up_blocks.1.attentions.1.transformer_blocks.0.attn1): missing tensor '2.to_q_.1.bias'"
            in str(excinfo.value))


def test_misnamed_tensor_names_both_keys(saved_folder):
    rewrite_tensors(saved_folder, lambda t: t.update({"1.to_out.weight": t.pop("1.to_out.0.weight")}))
    with pytest.raises(LinFusionWeightsError) as excinfo:
        LinFusion.from_pretrained(saved_folder)
    message = str(excinfo.value)
    assert "module 1 (up_blocks.1.attentions.0.transformer_blocks.0.attn1): missing tensor '1.to_out.0.weight'" in message
    assert "module 1 (up_blocks.1.attentions.0.transformer_blocks.0.attn1): unexpected tensor '1.to_out.weight'" in message


def test_extra_and_misshaped_tensors_are_errors(saved_folder):
    def edit(tensors):
        tensors["4.to_q.weight"] = torch.zeros(32, 32)
        tensors["0.to_v.weight"] = torch.zeros(32, 16)

    rewrite_tensors(saved_folder, edit)
    with pytest.raises(LinFusionWeightsError) as excinfo:
        LinFusion.from_pretrained(saved_folder)
    message = str(excinfo.value)
    assert "module 4 (beyond modules_list, which has 4 entries): unexpected tensor '4.to_q.weight'" in message
    assert "tensor '0.to_v.weight' has shape (32, 16), expected (32, 32)" in message


def test_bad_config_is_an_error(saved_folder):
    config = json.loads((saved_folder / "config.json").read_text())
    del config["modules_list"][1]["heads"]
    (saved_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LinFusionWeightsError, match=r"modules_list\[1\] \(up_blocks.1.attentions.0.*missing heads"):
        LinFusion.from_pretrained(saved_folder)
    (saved_folder / WEIGHTS_NAME).unlink()
    with pytest.raises(LinFusionWeightsError, match=f"no {WEIGHTS_NAME}"):
        LinFusion.from_pretrained(saved_folder)
