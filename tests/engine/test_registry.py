"""The model registry: file round trip, identity, availability messages, torch-free imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from linfusion_engine.registry import (
    ModelEntry,
    ModelNotAvailableError,
    ModelRegistry,
    UnknownModelError,
)


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models.yaml", tmp_path / "models")


def _fine_tune(tmp_path: Path) -> Path:
    """A fake local base folder with one weight file."""
    folder = tmp_path / "my-finetune"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"A" * 64)
    (folder / "model_index.json").write_text("{}")
    return folder


def test_registry_file_round_trip(tmp_path, registry):
    entry = ModelEntry("studio-v2", "sdxl", str(tmp_path / "base"), "none", 1024, "our fine-tune",
                       {"ink": "/loras/ink.safetensors"})
    registry.add(entry)
    reread = ModelRegistry(registry.registry_file, registry.models_dir)
    assert reread.get("studio-v2") == entry
    assert "studio-v2" in reread.names() and "tiny-sd15" in reread.names()


def test_file_entry_overrides_a_builtin(tmp_path, registry):
    registry.add(ModelEntry("sd15", "sd15", str(tmp_path / "local-sd15"), "from_unet"))
    assert ModelRegistry(registry.registry_file, registry.models_dir).get("sd15").base == str(tmp_path / "local-sd15")


def test_identity_follows_weight_bytes_even_within_the_same_second(tmp_path, registry):
    folder = _fine_tune(tmp_path)
    entry = ModelEntry("ft", "sd15", str(folder), "none")
    first = registry.identity(entry)
    assert registry.identity(entry) == first  # stable while nothing changes
    assert list(registry.weight_digests(entry)) == ["base/unet/diffusion_pytorch_model.safetensors"]

    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"B" * 64)  # same size, same second
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # and a filesystem with coarse clocks
    assert registry.identity(entry) != first


def test_identity_changes_with_the_entry_but_not_for_tiny_files(registry):
    tiny = registry.get("tiny-sd15")
    assert registry.weight_digests(tiny) == {}
    assert registry.identity(tiny) == registry.identity(tiny)
    assert registry.identity(tiny) != registry.identity(registry.get("tiny-sdxl"))


def test_unknown_model_lists_the_registered_names(registry):
    with pytest.raises(UnknownModelError, match="unknown model 'nope'.*tiny-sd15"):
        registry.get("nope")


def test_missing_folder_message_says_how_to_provide_it(tmp_path, registry):
    entry = ModelEntry("gone", "sd15", str(tmp_path / "no-such-folder"), "none")
    with pytest.raises(ModelNotAvailableError) as info:
        registry.require_available(entry)
    message = str(info.value)
    assert "no-such-folder" in message and "does not exist" in message
    assert "linstudio models add NAME --base" in message
    assert "nothing is downloaded" in message


def test_uncached_hub_ids_name_the_cache_and_the_right_option(tmp_path, registry, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    entry = ModelEntry("hubbed", "sd15", "someorg/some-model", "someorg/some-linfusion")
    problems = registry.missing(entry)
    assert len(problems) == 2
    assert "huggingface-cli download someorg/some-model" in problems[0] and str(tmp_path / "hub") in problems[0]
    assert "--linfusion /path" in problems[1]


def test_a_cached_hub_snapshot_counts_as_available(tmp_path, registry, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--someorg--some-model"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    entry = ModelEntry("hubbed", "sd15", "someorg/some-model", "none")
    assert registry.base_path(entry) == repo / "snapshots" / "abc123"
    assert registry.is_available(entry)


def test_broken_registry_files_name_the_file(tmp_path, registry):
    registry.registry_file.write_text("models: [unclosed")
    with pytest.raises(ValueError, match="models.yaml: not valid YAML"):
        ModelRegistry(registry.registry_file, registry.models_dir)
    registry.registry_file.write_text("models:\n  x: {family: sd3, base: /x}\n")
    with pytest.raises(ValueError, match=r"models\.x\.family"):
        ModelRegistry(registry.registry_file, registry.models_dir)


def test_sdedit_strengths_round_trip_and_leave_older_entries_their_identity(tmp_path, registry):
    folder = _fine_tune(tmp_path)
    plain = ModelEntry("ft", "sd15", str(folder), "none")
    before = registry.identity(plain)
    registry.add(plain)
    assert "sdedit_strengths" not in yaml.safe_load(registry.registry_file.read_text())["models"]["ft"]
    assert registry.identity(ModelRegistry(registry.registry_file, registry.models_dir).get("ft")) == before

    tuned = ModelEntry("ft", "sd15", str(folder), "none", sdedit_strengths=[0.3, 0.2])
    assert tuned.sdedit_strengths == (0.3, 0.2)
    registry.add(tuned)
    assert ModelRegistry(registry.registry_file, registry.models_dir).get("ft").sdedit_strengths == (0.3, 0.2)
    assert registry.identity(tuned) != before  # they change the pixels of every sdedit render


def test_bad_sdedit_strengths_name_the_field(registry):
    registry.registry_file.write_text("models:\n  x: {family: sd15, base: /x, sdedit_strengths: [0.3, 1.5]}\n")
    with pytest.raises(ValueError, match=r"models\.x\.sdedit_strengths: a list of strengths in \(0, 1\]"):
        ModelRegistry(registry.registry_file, registry.models_dir)
    registry.registry_file.write_text("models:\n  x: {family: sd15, base: /x, sdedit_strengths: high}\n")
    with pytest.raises(ValueError, match=r"models\.x: sdedit_strengths: expected a list of numbers"):
        ModelRegistry(registry.registry_file, registry.models_dir)


def test_add_refuses_bad_names_and_families(registry):
    with pytest.raises(ValueError, match="letters, digits"):
        registry.add(ModelEntry("bad name", "sd15", "/x"))
    with pytest.raises(ValueError, match="must be one of"):
        registry.add(ModelEntry("ok", "sd3", "/x"))  # type: ignore[arg-type]


def test_registry_and_scheduler_names_import_without_torch():
    code = ("import sys; import linfusion_engine.registry, linfusion_engine.schedulers, linfusion_engine.engine; "
            "from linfusion_engine.engine import RenderRequest; RenderRequest('x', width=64).check_inputs(); "
            "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_packaged_model_ships_with_the_code_and_is_identified_by_its_files(tmp_path, registry, monkeypatch):
    """`package:NAME` locations (trained weights committed with the code, like shapes-sd15): always
    local, no build step, identified by the sha256 of every file, configs included."""
    from linfusion_engine import registry as registry_module

    packaged = tmp_path / "packaged"
    (packaged / "toy-model" / "unet").mkdir(parents=True)
    (packaged / "toy-model" / "vae").mkdir()
    (packaged / "toy-model" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"W" * 32)
    config = packaged / "toy-model" / "vae" / "config.json"
    config.write_text('{"scaling_factor": 0.5}')
    monkeypatch.setattr(registry_module, "PACKAGED_MODELS_DIR", packaged)
    entry = ModelEntry("toy", "sd15", "package:toy-model", "none", 128, builtin=True)

    assert entry.is_packaged and entry.is_toy_scale and not entry.is_tiny
    assert entry.base_format == "builtin" and registry.missing(entry) == []
    assert set(registry.weight_digests(entry)) == {"base/unet/diffusion_pytorch_model.safetensors",
                                                   "base/vae/config.json"}  # the scaling factor lives there
    first = registry.identity(entry)
    config.write_text('{"scaling_factor": 0.25}')
    assert registry.identity(entry) != first

    gone = ModelEntry("gone", "sd15", "package:not-shipped", "none", 128, builtin=True)
    with pytest.raises(ModelNotAvailableError, match="ships with the code"):
        registry.require_available(gone)
