"""The published distillation loss on the tiny SD-1.5 model: terms, captured layers, what trains."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from linfusion_devkit.distill.loss import Attn1Capture, distillation_loss, training_target
from linfusion_devkit.distill.setup import (
    build_linfusion, encode_captions, load_pipeline, resolve_base, student_and_teacher)
from linfusion_engine.linfusion import LinFusion, is_mounted
from linfusion_engine.registry import ModelRegistry
from linstudio.settings import get_settings


@pytest.fixture(scope="module")
def pristine():
    """The tiny SD-1.5 pipeline, loaded once; each test works on a deep copy."""
    return load_pipeline(resolve_base("tiny-sd15", ModelRegistry.from_settings(get_settings())))


@pytest.fixture
def make_models(pristine):
    def make(init: str):
        pipe = copy.deepcopy(pristine)
        return student_and_teacher(pipe, "sd15", build_linfusion(pipe.unet, init, seed=0))
    return make


def _inputs(models, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 8, 8, generator=generator)  # (B, 4, 64/8, 64/8)
    timesteps = torch.tensor([10, 900])
    conditioning = encode_captions(models.pipeline, "sd15", ["a cat", "a dog"], 64, "cpu")
    return latents, timesteps, conditioning


def _forward(models, latents, timesteps, conditioning):
    with torch.no_grad(), Attn1Capture(models.teacher, detach=True) as teacher_capture:
        teacher = models.teacher(latents, timesteps, **conditioning).sample
    with Attn1Capture(models.student) as student_capture:
        student = models.student(latents, timesteps, **conditioning).sample
    return student, teacher, student_capture.outputs, teacher_capture.outputs


def test_capture_sees_every_attn1_in_published_order_and_unhooks(make_models):
    models = make_models("teacher")
    latents, timesteps, conditioning = _inputs(models)
    capture = Attn1Capture(models.student)
    assert capture.names == models.linfusion.module_names  # same order as modules_list
    with capture:
        models.student(latents, timesteps, **conditioning)
    assert len(capture.outputs) == 4
    assert capture.outputs[0].shape == (2, 64, 32)  # (B, tokens of the 8x8 latent, C of down block 0)
    attn1 = [m for n, m in models.student.named_modules() if n.endswith("attn1")]
    assert len(attn1) == 4 and all(not module._forward_hooks for module in attn1)  # hooks removed on exit
    with pytest.raises(RuntimeError, match="did not run"):
        Attn1Capture(models.student).outputs


def test_loss_is_the_published_formula(make_models):
    models = make_models("random")
    latents, timesteps, conditioning = _inputs(models)
    student, teacher, s_attn, t_attn = _forward(models, latents, timesteps, conditioning)
    target = torch.randn_like(student)
    terms = distillation_loss(student, teacher, target, s_attn, t_attn)
    expected_feature = sum(F.mse_loss(s, t) for s, t in zip(s_attn, t_attn)) / len(s_attn)
    expected = F.mse_loss(student, target) + 0.5 * F.mse_loss(student, teacher) + 0.5 * expected_feature
    assert torch.allclose(terms.total, expected, rtol=1e-5)
    assert torch.allclose(terms.feature, expected_feature, rtol=1e-5)
    assert float(terms.teacher) > 0 and float(terms.feature) > 0
    with pytest.raises(ValueError, match="same, non-empty set"):
        distillation_loss(student, teacher, target, s_attn[:2], t_attn)


def test_only_the_linfusion_layers_get_gradients_and_the_teacher_stays_softmax(make_models):
    models = make_models("random")
    assert is_mounted(models.student) and not is_mounted(models.teacher)
    latents, timesteps, conditioning = _inputs(models)
    student, teacher, s_attn, t_attn = _forward(models, latents, timesteps, conditioning)
    distillation_loss(student, teacher, torch.randn_like(student), s_attn, t_attn).total.backward()
    linfusion_ids = {id(p) for p in models.linfusion.parameters()}
    with_grad = [name for name, p in models.student.named_parameters() if p.grad is not None]
    assert with_grad and all(id(dict(models.student.named_parameters())[n]) in linfusion_ids for n in with_grad)
    assert all(p.grad is None for p in models.teacher.parameters())
    assert all(p.grad is not None for p in models.linfusion.parameters())


def test_teacher_init_starts_much_closer_than_random_init(make_models):
    losses = {}
    for init in ("teacher", "random"):
        models = make_models(init)
        latents, timesteps, conditioning = _inputs(models)
        student, teacher, s_attn, t_attn = _forward(models, latents, timesteps, conditioning)
        terms = distillation_loss(student, teacher, torch.zeros_like(student), s_attn, t_attn)
        losses[init] = float(terms.teacher + terms.feature)
    assert losses["teacher"] < losses["random"] / 10


def test_v_prediction_target_and_unknown_prediction_type():
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    latents, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t = torch.tensor([500])
    alpha = scheduler.alphas_cumprod[500]
    expected = alpha.sqrt() * noise - (1 - alpha).sqrt() * latents
    assert torch.allclose(training_target(scheduler, latents, noise, t), expected, atol=1e-6)
    assert training_target(DDPMScheduler(), latents, noise, t) is noise
    with pytest.raises(ValueError, match="prediction_type 'sample'"):
        training_target(DDPMScheduler(prediction_type="sample"), latents, noise, t)


def test_random_init_is_seeded_and_leaves_the_global_rng_alone(pristine):
    pipe = pristine
    state = torch.random.get_rng_state()
    first = build_linfusion(pipe.unet, "random", seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    again, other = build_linfusion(pipe.unet, "random", seed=5), build_linfusion(pipe.unet, "random", seed=6)
    key = "0.to_q.weight"
    assert torch.equal(first.state_dict()[key], again.state_dict()[key])
    assert not torch.equal(first.state_dict()[key], other.state_dict()[key])
    assert isinstance(first, LinFusion)
