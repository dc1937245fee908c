"""Conditioning parts in the model registry: tiny built-ins, studio entries, clear errors. Torch-free."""

from __future__ import annotations

import subprocess
import sys

import pytest

from linfusion_engine.registry import ModelEntry, ModelNotAvailableError, ModelRegistry


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models.yaml", tmp_path / "models")


def test_tiny_models_list_their_conditioning_parts_and_tiny_conditioning_builds_those_names(registry):
    from linfusion_devkit.tiny_conditioning import builtin_names

    for name in ("tiny-sd15", "tiny-sdxl"):
        entry = registry.get(name)
        assert set(entry.controlnets) >= {"canny", "depth"}
        assert entry.ip_adapter and "tiny-style" in entry.loras
        assert builtin_names(name) == {"controlnets": entry.controlnets, "ip_adapter": entry.ip_adapter,
                                       "loras": entry.loras}
        assert registry.missing(entry) == []  # built-in LoRAs are built on first use, not missing


def test_studio_entry_with_controlnets_round_trips_and_unset_parts_stay_out_of_the_file(tmp_path, registry):
    registry.add(ModelEntry("plain", "sd15", str(tmp_path / "base"), "none"))
    registry.add(ModelEntry("ours", "sdxl", str(tmp_path / "base"), "none", 1024,
                            controlnets={"depth": str(tmp_path / "cn-depth")}, ip_adapter=str(tmp_path / "ip")))
    text = registry.registry_file.read_text()
    plain_block = text.split("ours:")[0]
    assert "controlnets" not in plain_block and "ip_adapter" not in plain_block
    reread = ModelRegistry(registry.registry_file, registry.models_dir)
    assert reread.get("ours").controlnets == {"depth": str(tmp_path / "cn-depth")}
    assert reread.get("ours").ip_adapter == str(tmp_path / "ip")


def test_identity_of_an_entry_without_conditioning_is_unchanged_by_the_new_fields(tmp_path, registry):
    entry = ModelEntry("ft", "sd15", str(tmp_path / "base"), "none")
    assert "controlnets" not in entry.to_yaml_dict() and "ip_adapter" not in entry.to_yaml_dict()
    with_cn = ModelEntry("ft", "sd15", str(tmp_path / "base"), "none", controlnets={"canny": "/x"})
    assert registry.identity(with_cn) != registry.identity(entry)


def test_controlnet_weights_count_in_the_identity(tmp_path, registry):
    folder = tmp_path / "cn"
    folder.mkdir()
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"A" * 32)
    entry = ModelEntry("ft", "sd15", str(tmp_path / "base"), "none", controlnets={"canny": str(folder)})
    assert "controlnet/canny/diffusion_pytorch_model.safetensors" in registry.weight_digests(entry)
    first = registry.identity(entry)
    weights.write_bytes(b"B" * 33)
    assert registry.identity(entry) != first


def test_require_conditioning_names_what_is_missing(tmp_path, registry):
    tiny = registry.get("tiny-sd15")
    assert registry.require_conditioning(tiny, "controlnet", "canny") == "builtin:tiny-sd15-controlnet-canny"
    with pytest.raises(ValueError, match=r"no ControlNet for control type 'openpose' \(its ControlNets: canny, depth\)"):
        registry.require_conditioning(tiny, "controlnet", "openpose")
    with pytest.raises(ValueError, match="LoRA 'ink' is not registered with model 'tiny-sd15'"):
        registry.require_conditioning(tiny, "lora", "ink")
    ours = ModelEntry("ours", "sd15", str(tmp_path), "none", controlnets={"depth": str(tmp_path / "absent")},
                      loras={"ink": str(tmp_path / "ink.safetensors")})
    with pytest.raises(ModelNotAvailableError, match="ControlNet 'depth' of model 'ours'.*does not exist"):
        registry.require_conditioning(ours, "controlnet", "depth")
    with pytest.raises(ValueError, match="model 'ours' has no IP-Adapter"):
        registry.require_conditioning(ours, "ip_adapter")
    with pytest.raises(ModelNotAvailableError, match="LoRA 'ink' of model 'ours'"):
        registry.require_conditioning(ours, "lora", "ink")
    # A missing ControlNet does not make the model itself unavailable: only jobs using it fail.
    assert not any("ControlNet" in problem for problem in registry.missing(ours))


def test_request_conditioning_checks_import_no_torch():
    code = ("import sys\nfrom PIL import Image\nfrom linfusion_engine.engine import RenderRequest\n"
            "r = RenderRequest('x', controlnets=[('canny', Image.new('RGB', (8, 8)), 0.5)], loras=[('a', 1.0)])\n"
            "r.check_inputs()\nassert 'torch' not in sys.modules, 'torch imported'\n"
            "try:\n    RenderRequest('x', controlnets=[('canny', 'a.png', 1.0)]).check_inputs()\n"
            "except ValueError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "controlnets[0].image must be a PIL image, got str" in out.stdout


@pytest.mark.parametrize("kwargs, message", [
    ({"loras": [("a", 1.0), ("a", 0.5)]}, "loras: a given more than once"),
    ({"loras": [("a", 3.0)]}, "loras[0]: scale must be a number from 0 to 2"),
    ({"init_image": "x.png"}, "init_image must be a PIL image"),
    ({"mask": "m"}, "mask needs an init_image"),
])
def test_request_conditioning_errors_name_the_field(kwargs, message):
    from PIL import Image

    from linfusion_engine.engine import RenderRequest

    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RenderRequest("x", **kwargs).check_inputs()
    strength = RenderRequest("x", init_image=Image.new("RGB", (8, 8)), strength=0)
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        strength.check_inputs()
