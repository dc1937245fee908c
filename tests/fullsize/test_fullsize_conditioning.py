"""Conditioning models as single files: a full-size SD-1.5 ControlNet file, an IP-Adapter weights file.

Studios download ControlNets as one `.safetensors` (diffusers keys, or the original
`control_model.*` layout) and IP-Adapters as `models/ip-adapter_*.safetensors` beside their
`image_encoder/`. Both are registered with `linstudio models add --controlnet KIND=PATH
--ip-adapter PATH` and loaded by the engine from the file itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

pytestmark = [pytest.mark.slow, pytest.mark.fullsize]


def test_a_full_size_controlnet_file_loads_exactly_against_the_carried_config(tmp_path):
    """361 M parameters in diffusers keys, one file: read with the family's carried ControlNet config."""
    from diffusers import ControlNetModel

    from linfusion_engine.checkpoints import config_folder
    from linfusion_engine.conditioning.controlnet import load_controlnet
    from linfusion_engine.registry import ModelEntry, ModelRegistry

    config = ControlNetModel.load_config(str(config_folder("sd15") / "controlnet"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        source = ControlNetModel.from_config(config).to(torch.float16)
    path = tmp_path / "control_canny_sd15.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    expected = {k: v.clone() for k, v in source.state_dict().items()}
    del source

    registry = ModelRegistry(tmp_path / "models.yaml", tmp_path / "models")
    entry = ModelEntry("studio", "sd15", str(tmp_path / "base.safetensors"), "none", controlnets={"canny": str(path)})
    controlnet = load_controlnet(registry, entry, "canny", device=torch.device("cpu"), dtype=torch.float16)
    loaded = controlnet.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert registry.weight_digests(entry)["controlnet/canny"]  # the file counts in the identity


def test_an_ip_adapter_weights_file_with_its_image_encoder_beside_it_renders(tmp_path, monkeypatch):
    """The tiny IP-Adapter's own file, registered by path, conditions a render like its folder does."""
    from linfusion_engine.conditioning.inputs import IpAdapterInput
    from linfusion_engine.engine import Engine, RenderRequest
    from linfusion_engine.registry import ModelRegistry, resolve_location
    from linfusion_devkit.tiny_conditioning import IP_ADAPTER_WEIGHT_NAME, ensure_tiny_conditioning
    from linfusion_engine.loading import IP_ADAPTER_SUBFOLDER
    from linstudio.cli import app
    from linstudio.settings import get_settings

    home = tmp_path / "home"
    monkeypatch.setenv("LINSTUDIO_HOME", str(home))
    get_settings.cache_clear()
    models = home / "models"
    folder = ensure_tiny_conditioning("tiny-sd15-ip-adapter", resolve_location("builtin:tiny-sd15-ip-adapter", models),
                                      models)
    weights = folder / IP_ADAPTER_SUBFOLDER / IP_ADAPTER_WEIGHT_NAME
    base = models / "tiny-sd15" / "v1"
    result = CliRunner().invoke(app, ["models", "add", "ipa-file", "--base", str(base), "--family", "sd15",
                                      "--native-size", "64", "--ip-adapter", str(weights)])
    assert result.exit_code == 0, result.output
    registry = ModelRegistry(home / "models.yaml", models)
    reference = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))

    def render(model, with_reference):
        engine = Engine(model, registry=registry, device="cpu")
        try:
            return np.asarray(engine.render(RenderRequest(
                "a crate", seed=2, width=64, height=64, steps=2,
                ip_adapter=IpAdapterInput([reference], 1.0) if with_reference else None)).image)
        finally:
            engine.close()

    from_file = render("ipa-file", True)
    assert not np.array_equal(from_file, render("ipa-file", False))  # the reference changed the image
    assert np.array_equal(from_file, render("tiny-sd15", True))  # exactly as the same IP-Adapter's folder does
    get_settings.cache_clear()
