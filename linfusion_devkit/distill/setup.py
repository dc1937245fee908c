"""The student and the teacher: one base pipeline, two UNets.

The student is the base UNet with LinFusion mounted on its attn1 layers; the teacher is a frozen
deep copy of the same UNet that keeps diffusers' softmax attention. Everything but the LinFusion
layers is frozen: the VAE and text encoders only encode the batch, the teacher only answers.

`--init teacher` builds the layers from the UNet's own attn1 Q/K/V/out with identity MLPs
(`LinFusion.from_unet`: the student starts as plain linear attention with the teacher's
projections, upstream's first recipe); `--init random` default-initialises every weight from the
seed (upstream's current recipe).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from linfusion_engine.builtins import ensure_built
from linfusion_engine.linfusion import LinFusion
from linfusion_engine.loading import hub_offline, load_base_pipeline, quiet_progress_bars

INITS = ("teacher", "random")
SDXL_PIPELINE_CLASSES = ("StableDiffusionXLPipeline",)


class DistillSetupError(ValueError):
    """The base model cannot be distilled as given; the message says which and why."""


@dataclass(frozen=True)
class BaseModel:
    """Where a base pipeline is and what it is: `family` decides the conditioning (sd15 or sdxl code path)."""

    folder: Path
    family: str
    native_size: int
    # A registry entry (and its registry) loads the way the renderer loads it: single files, the
    # entry's VAE and prediction type included (`linfusion_engine.loading`). None for a bare folder.
    entry: Any = field(default=None, compare=False)
    registry: Any = field(default=None, compare=False)


def family_of_folder(folder: Path) -> str:
    """sdxl for an SD-XL pipeline folder, sd15 for SD-1.x/2.x (one code path; v-prediction comes from the scheduler)."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise DistillSetupError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
    class_name = json.loads(index_file.read_text()).get("_class_name", "")
    return "sdxl" if class_name in SDXL_PIPELINE_CLASSES else "sd15"


def resolve_base(base: str, registry) -> BaseModel:
    """A registry name (tiny models are built on first use, `registry` says where) or a diffusers
    pipeline folder (then `registry` is not asked)."""
    path = Path(base).expanduser()
    if path.is_dir():
        family = family_of_folder(path)
        native = 1024 if family == "sdxl" else 512
        return BaseModel(path.resolve(), family, native)
    if path.is_file():
        raise DistillSetupError(f"{path}: a single-file checkpoint: register it first "
                                f"(`linstudio models add NAME --base {path}`) and distil NAME")
    entry = registry.get(base)  # UnknownModelError names the registered models
    folder = registry.base_path(entry)
    if entry.is_tiny:  # built the way the engine builds it: by the builder installed for `builtin:`
        ensure_built(entry.base, folder, registry.models_dir)
    if folder is None:
        registry.require_available(entry)  # raises ModelNotAvailableError saying how to provide it
    return BaseModel(Path(folder), "sdxl" if entry.family == "sdxl" else "sd15", entry.native_size,
                     entry=entry, registry=registry)


def load_pipeline(base: BaseModel):
    """The base pipeline on the CPU in fp32, offline, without progress bars."""
    if base.entry is not None:
        # The teacher is the base alone: an entry whose LinFusion weights are what this run is
        # about to produce (a new model's registry entry naming its future folder) must not be
        # refused for lacking them.
        base.registry.require_available(replace(base.entry, linfusion="none"))
        pipe = load_base_pipeline(base.registry, base.entry, dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    if base.family == "sdxl":
        from diffusers import StableDiffusionXLPipeline as pipeline_class

        extra: dict[str, Any] = {"add_watermarker": False}
    else:
        from diffusers import StableDiffusionPipeline as pipeline_class

        extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    with hub_offline(), quiet_progress_bars():
        pipe = pipeline_class.from_pretrained(base.folder, local_files_only=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_linfusion(unet: nn.Module, init: str, seed: int, projection_mid_dim: int | None = None) -> LinFusion:
    """LinFusion layers for `unet`, from its own attn1 weights (`teacher`) or default init (`random`)."""
    if init == "teacher":
        return LinFusion.from_unet(unet, projection_mid_dim=projection_mid_dim, seed=seed)
    if init == "random":
        modules_list = LinFusion.modules_list_for_unet(unet, projection_mid_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LinFusion(modules_list)
        return model.to(device=unet.device, dtype=unet.dtype)
    raise DistillSetupError(f"init {init!r}: must be one of {', '.join(INITS)}")


@dataclass
class StudentTeacher:
    """The models of one distillation run (see the module docstring)."""

    pipeline: Any
    student: nn.Module
    teacher: nn.Module
    linfusion: LinFusion
    family: str

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.linfusion.parameters() if p.requires_grad]


def student_and_teacher(pipe, family: str, linfusion: LinFusion) -> StudentTeacher:
    """Freeze everything, copy the UNet as the teacher, mount `linfusion` on the student, unfreeze only it."""
    for component in (pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None), pipe.unet):
        if component is not None:
            component.requires_grad_(False).eval()
    student = pipe.unet
    teacher = copy.deepcopy(student)  # before mounting: the teacher keeps softmax attention
    linfusion.mount(student)
    linfusion.requires_grad_(True)
    student.train()
    return StudentTeacher(pipeline=pipe, student=student, teacher=teacher, linfusion=linfusion, family=family)


@torch.no_grad()
def encode_captions(pipe, family: str, captions: list[str], resolution: int, device) -> dict[str, Any]:
    """The UNet's text conditioning for a batch: `encoder_hidden_states`, plus SD-XL's added_cond_kwargs.

    SD-XL's size conditioning says the image was seen whole at `resolution`: original size and
    target size R x R, crop (0, 0) -- what a centre-cropped square training image is.
    """
    if family == "sdxl":
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=captions, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * len(captions),
                                device=device, dtype=embeds.dtype)  # (B, 6)
        return {"encoder_hidden_states": embeds,
                "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
    embeds, _ = pipe.encode_prompt(captions, device, 1, False)
    return {"encoder_hidden_states": embeds}
