"""The Engine end to end on the tiny models (CPU, 64-128 px, 2 steps).

One engine per tiny family is loaded once per session (`sd15_engine`, `sdxl_engine`); tests that
need a fresh load (timings, close, errors) build their own engine on a small registry.
"""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
import torch

import linfusion_engine
from linfusion_engine.engine import Engine, RenderRequest, choose_attention, hub_offline
from linfusion_engine.registry import ModelEntry, ModelNotAvailableError, ModelRegistry, UnknownModelError
from linfusion_engine.schedulers import SCHEDULER_NAMES, make_scheduler

STEPS = 2


@pytest.fixture(scope="session")
def session_registry(session_root) -> ModelRegistry:
    """The session home's registry, named explicitly so per-test homes cannot redirect it."""
    home = session_root / "home"
    return ModelRegistry(home / "models.yaml", home / "models")


@pytest.fixture(scope="session")
def sd15_engine(session_registry) -> Engine:
    engine = Engine("tiny-sd15", registry=session_registry, device="cpu")
    engine.load()
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def sdxl_engine(session_registry) -> Engine:
    engine = Engine("tiny-sdxl", registry=session_registry, device="cpu")
    engine.load()
    yield engine
    engine.close()


@pytest.fixture
def no_network(monkeypatch):
    """Record and refuse every attempt to open a connection or resolve a host name."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def pixels(engine: Engine, **fields) -> np.ndarray:
    request = RenderRequest(prompt=fields.pop("prompt", "a lighthouse at dusk"), steps=STEPS, **fields)
    return np.asarray(engine.render(request).image)


# -- determinism and sizes ------------------------------------------------------------------------
@pytest.mark.parametrize("engine_name", ["sd15_engine", "sdxl_engine"])
def test_same_seed_same_pixels_other_seed_other_pixels(request, engine_name):
    engine = request.getfixturevalue(engine_name)
    first = pixels(engine, seed=7, width=64, height=64)
    again = pixels(engine, seed=7, width=64, height=64)
    other = pixels(engine, seed=8, width=64, height=64)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("engine_name", ["sd15_engine", "sdxl_engine"])
def test_non_square_render_has_the_requested_size(request, engine_name):
    engine = request.getfixturevalue(engine_name)
    result = engine.render(RenderRequest("a wide street", width=128, height=64, steps=STEPS, seed=3))
    assert result.image.size == (128, 64) and result.image.mode == "RGB"
    assert (result.metadata["width"], result.metadata["height"]) == (128, 64)


def test_size_defaults_to_the_native_size(sd15_engine):
    result = sd15_engine.render(RenderRequest("x", steps=1))
    assert result.image.size == (sd15_engine.entry.native_size,) * 2


def test_prompt_changes_the_image(sd15_engine):
    assert not np.array_equal(pixels(sd15_engine, prompt="red", width=64, height=64),
                              pixels(sd15_engine, prompt="blue", width=64, height=64))


# -- attention backends -----------------------------------------------------------------------------
@pytest.mark.parametrize("engine_name", ["sd15_engine", "sdxl_engine"])
def test_attention_modes_pick_the_backend_and_switching_never_reloads(request, engine_name):
    engine = request.getfixturevalue(engine_name)
    pipeline, loads = engine.pipeline, engine.load_count
    assert engine.entry.native_size == 64

    def render(attention, width=64, height=64):
        result = engine.render(RenderRequest("a fox", seed=5, width=width, height=height, steps=STEPS,
                                             attention=attention))
        assert engine.attention_backend == result.metadata["attention"]
        return result.metadata["attention"], np.asarray(result.image)

    soft_backend, soft = render("softmax")
    auto_backend, auto = render("auto")  # at the native size: softmax
    linear_backend, linear = render("linear")
    again_backend, soft_again = render("softmax")
    big_auto_backend, big_auto = render("auto", 128, 64)  # above the native size: linear
    big_linear_backend, big_linear = render("linear", 128, 64)

    assert (soft_backend, auto_backend, linear_backend, again_backend) == ("softmax", "softmax", "linear", "softmax")
    assert (big_auto_backend, big_linear_backend) == ("linear", "linear")
    assert np.array_equal(soft, auto)
    assert not np.array_equal(soft, linear)  # the backend really changed the computation
    assert np.array_equal(soft, soft_again)  # and switching back restores the original exactly
    assert np.array_equal(big_auto, big_linear)
    assert engine.pipeline is pipeline and engine.load_count == loads


def test_choose_attention_uses_both_sides_against_the_native_size():
    entry = ModelEntry("m", "sd15", "/x", "from_unet", native_size=512)
    assert choose_attention(RenderRequest("x"), 512, 512, entry) == "softmax"
    assert choose_attention(RenderRequest("x"), 512, 520, entry) == "linear"
    assert choose_attention(RenderRequest("x"), 1024, 256, entry) == "linear"
    assert choose_attention(RenderRequest("x", attention="softmax"), 4096, 4096, entry) == "softmax"
    assert choose_attention(RenderRequest("x", attention="linear"), 64, 64, entry) == "linear"


def test_model_without_linfusion_renders_softmax_and_refuses_linear(tmp_path, no_network):
    registry = ModelRegistry(tmp_path / "models.yaml", tmp_path / "models")
    registry.add(ModelEntry("plain", "sd15", "builtin:tiny-sd15", "none", 64))
    engine = Engine("plain", registry=registry, device="cpu")
    result = engine.render(RenderRequest("x", width=128, height=64, steps=1))  # auto, above native
    assert result.metadata["attention"] == "softmax" and engine.linfusion is None
    with pytest.raises(ValueError, match="has no LinFusion weights"):
        engine.render(RenderRequest("x", steps=1, attention="linear"))
    assert no_network == []


# -- schedulers -----------------------------------------------------------------------------------
def test_every_named_scheduler_renders(sd15_engine):
    from diffusers.utils import is_scipy_available

    images = {}
    for name in SCHEDULER_NAMES:
        if name == "lms" and not is_scipy_available():
            with pytest.raises(ImportError, match="needs scipy"):
                sd15_engine.render(RenderRequest("x", width=64, height=64, steps=STEPS, scheduler=name))
            continue
        images[name] = pixels(sd15_engine, width=64, height=64, scheduler=name)
    assert not np.array_equal(images["euler"], images["ddim"])
    assert not np.array_equal(images["euler"], images["euler_a"])


def test_schedulers_keep_the_base_training_schedule():
    base = {"_class_name": "DDIMScheduler", "beta_start": 0.001, "beta_end": 0.02, "beta_schedule": "scaled_linear",
            "prediction_type": "v_prediction", "steps_offset": 1, "clip_sample": False}
    for name in ("euler", "dpmpp_2m_karras", "unipc"):
        scheduler = make_scheduler(name, base)
        assert scheduler.config.prediction_type == "v_prediction"
        assert scheduler.config.beta_start == 0.001
    assert make_scheduler("dpmpp_2m_karras", base).config.use_karras_sigmas is True
    assert make_scheduler("dpmpp_2m", base).config.use_karras_sigmas is False
    with pytest.raises(ValueError, match="unknown scheduler 'k_lms'; known: euler"):
        make_scheduler("k_lms", base)


# -- metadata, timings, memory ---------------------------------------------------------------------
def test_metadata_is_complete_and_json_serialisable(sdxl_engine):
    result = sdxl_engine.render(RenderRequest("a fox", negative_prompt="blur", seed=11, width=64, height=64,
                                              steps=STEPS, guidance=5, scheduler="ddim"))
    meta = json.loads(json.dumps(result.metadata))
    expected = {"engine_version", "versions", "device", "device_name", "dtype", "attention", "attention_requested",
                "model", "family", "model_identity", "base", "linfusion", "weights", "prompt", "negative_prompt",
                "seed", "width", "height", "steps", "guidance", "scheduler", "timings", "peak_memory_bytes",
                "peak_memory_source", "process_peak_rss_bytes"}
    assert expected <= set(meta)
    assert meta["engine_version"] == linfusion_engine.__version__
    assert meta["versions"]["torch"] == torch.__version__
    assert {"diffusers", "transformers"} <= set(meta["versions"])
    assert (meta["device"], meta["dtype"]) == ("cpu", "float32")
    assert (meta["model"], meta["family"]) == ("tiny-sdxl", "sdxl")
    assert meta["model_identity"] == sdxl_engine.registry.identity(sdxl_engine.entry)
    assert (meta["seed"], meta["steps"], meta["guidance"], meta["scheduler"]) == (11, STEPS, 5.0, "ddim")
    assert meta["negative_prompt"] == "blur" and meta["attention"] == "softmax"
    assert set(meta["timings"]) == {"load_s", "render_s", "total_s"}
    assert meta["timings"]["load_s"] == 0.0 and meta["timings"]["render_s"] > 0
    assert meta["peak_memory_bytes"] is None  # no per-render peak on the CPU
    assert meta["process_peak_rss_bytes"] > 0
    assert meta["prompt_truncated"] == {} and meta["base_format"] == "builtin"


def test_a_prompt_cut_at_77_tokens_is_reported_in_the_metadata(sd15_engine):
    """diffusers drops what does not fit CLIP's window silently; the render says what was dropped.

    The tiny model's tokenizer is byte-level (one token per non-space character), so 75 of them fit.
    """
    long_prompt = "a castle on a hill at dusk, " * 3 + "with a red dragon circling the tallest tower"
    negative = "blurry"
    meta = sd15_engine.render(RenderRequest(long_prompt, negative_prompt=negative, seed=1, width=64, height=64,
                                            steps=1)).metadata
    cut = meta["prompt_truncated"]
    assert set(cut) == {"prompt"}  # the short negative prompt fits
    assert cut["prompt"]["kept"] == 75 and cut["prompt"]["tokens"] == len(long_prompt.replace(" ", ""))
    assert long_prompt.endswith(cut["prompt"]["dropped_text"]) and "tallest tower" in cut["prompt"]["dropped_text"]


def test_first_render_reports_the_load_and_close_frees_then_reloads(tmp_path, capfd):
    registry = ModelRegistry(tmp_path / "models.yaml", tmp_path / "models")
    engine = Engine("tiny-sd15", registry=registry, device="cpu")
    assert not engine.is_loaded and engine.attention_backend is None
    request = RenderRequest("x", width=64, height=64, steps=STEPS, seed=1)
    first = engine.render(request)
    second = engine.render(request)
    assert first.metadata["timings"]["load_s"] > 0 and second.metadata["timings"]["load_s"] == 0.0
    assert engine.load_count == 1
    captured = capfd.readouterr()
    assert "it/s" not in captured.err and "%|" not in captured.err  # no progress bars per render or load

    engine.close()
    assert not engine.is_loaded and engine.linfusion is None
    third = engine.render(request)
    assert engine.load_count == 2
    assert np.array_equal(np.asarray(first.image), np.asarray(third.image))


# -- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fields", "message"), [
    ({"width": 65}, "width must be a multiple of 8, got 65"),
    ({"height": 0}, "height must be positive"),
    ({"width": 16392}, "width must be at most 16384"),
    ({"height": 64.0}, "height must be a whole number of pixels"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"guidance": -1}, "guidance must be a number >= 0"),
    ({"seed": -1}, "seed must be an integer from 0"),
    ({"scheduler": "k_euler"}, "unknown scheduler 'k_euler'"),
    ({"attention": "fast"}, "unknown attention mode 'fast'; use one of auto, linear, softmax"),
    ({"prompt": None}, "prompt must be a string"),
])
def test_check_inputs_names_the_bad_field(fields, message):
    request = RenderRequest(**{"prompt": "x", **fields})
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        request.check_inputs()


def test_bad_request_fails_before_loading(tmp_path):
    engine = Engine("tiny-sd15", registry=ModelRegistry(tmp_path / "m.yaml", tmp_path / "models"), device="cpu")
    with pytest.raises(ValueError, match="multiple of 8"):
        engine.render(RenderRequest("x", width=100))
    assert not engine.is_loaded and not (tmp_path / "models").exists()


def test_unknown_model_fails_at_construction(tmp_path):
    with pytest.raises(UnknownModelError, match="unknown model 'sd9'"):
        Engine("sd9", registry=ModelRegistry(tmp_path / "m.yaml", tmp_path / "models"), device="cpu")


def test_missing_local_folder_fails_before_any_load(tmp_path, no_network):
    registry = ModelRegistry(tmp_path / "models.yaml", tmp_path / "models")
    registry.add(ModelEntry("ours", "sd15", str(tmp_path / "not-copied-yet"), "from_unet"))
    engine = Engine("ours", registry=registry, device="cpu")
    with pytest.raises(ModelNotAvailableError) as info:
        engine.render(RenderRequest("x", width=64, height=64))
    message = str(info.value)
    assert "not-copied-yet" in message and "linstudio models add" in message
    assert not engine.is_loaded and no_network == []


def test_uncached_hub_model_fails_fast_without_touching_the_network(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    registry = ModelRegistry(tmp_path / "models.yaml", tmp_path / "models")
    engine = Engine("sdxl", registry=registry, device="cpu")  # the built-in entry, nothing cached
    started = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as info:
        engine.load()
    assert time.perf_counter() - started < 1.0
    message = str(info.value)
    assert "huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0" in message
    assert "Yuanshi/LinFusion-XL" in message and "Traceback" not in message
    assert no_network == []


def test_hub_offline_switches_the_hub_client_off_and_restores_it(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with hub_offline():
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE is False


# -- devices ----------------------------------------------------------------------------------------
def test_device_and_dtype_choice():
    from linfusion_engine.devices import resolve_device, resolve_dtype

    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("torch.float16", cpu) == torch.float16
    assert resolve_dtype(torch.float32, cpu) == torch.float32
    with pytest.raises(ValueError, match="use float32, bfloat16 or float16"):
        resolve_dtype("int8", cpu)
    with pytest.raises(ValueError, match="not a torch device name"):
        resolve_device("gpu0")
    assert resolve_device("cpu") == cpu
    if torch.cuda.is_available():
        assert resolve_device(None).type == "cuda"
        assert resolve_dtype(None, torch.device("cuda")) in (torch.bfloat16, torch.float16)
    else:
        assert resolve_device(None) == cpu
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
