"""Is a distillation good enough? The student against its teacher on a prompt set.

For each prompt the teacher (the base model's softmax attention) renders an image while every
UNet call's inputs and attn1 outputs are recorded. The student (LinFusion mounted) is then run
on exactly those inputs -- teacher-forced, so per-layer errors do not compound along the
trajectory -- and renders its own image from the same seed.

Reported, per layer and overall:
- attention error: ||attn1_student - attn1_teacher|| / ||attn1_teacher|| per UNet call, averaged
  over calls and prompts (0 = identical; about 1 = unrelated outputs of the same size);
- noise-prediction error: the same relative error on the UNet's output;
- image error: RMSE and PSNR of the two renders in [0, 1] RGB, per prompt and averaged.

The images themselves are optional output (`teacher-NN.png`, `student-NN.png`): a studio's eye
on them is the final judge; the numbers tell runs and checkpoints apart.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_map

from linfusion_devkit.distill.loss import Attn1Capture
from linfusion_devkit.distill.setup import load_pipeline, resolve_base
from linfusion_engine.devices import resolve_device, resolve_dtype
from linfusion_engine.linfusion import LinFusion
from linfusion_engine.loading import hub_offline


@dataclass
class EvalReport:
    """What `evaluate` measured; `to_dict()` is the JSON the CLI prints and writes."""

    base: str
    linfusion: str
    size: tuple[int, int]
    steps: int
    guidance: float
    seed: int
    layers: list[dict] = field(default_factory=list)  # {name, attention_error}
    prompts: list[dict] = field(default_factory=list)  # {prompt, image_rmse, image_psnr, noise_error}
    attention_error: float = 0.0  # mean over layers
    noise_error: float = 0.0
    image_rmse: float = 0.0
    image_psnr: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["size"] = list(self.size)
        return data


def relative_error(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """||s - t|| / ||t|| in fp32 (a tiny floor keeps an all-zero teacher output finite)."""
    s, t = student.float(), teacher.float()
    return float(torch.linalg.vector_norm(s - t) / torch.linalg.vector_norm(t).clamp_min(1e-12))


def psnr(rmse: float) -> float:
    """PSNR in dB of images in [0, 1]; infinite for identical images (capped at 100 dB for JSON)."""
    return 100.0 if rmse <= 1e-5 else 20.0 * math.log10(1.0 / rmse)


def _clone(value):
    return tree_map(lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x, value)


class _UNetRecorder:
    """Records every UNet call's (args, kwargs) and its attn1 outputs, while attached."""

    def __init__(self, unet) -> None:
        self.unet = unet
        self.calls: list[tuple[tuple, dict]] = []
        self.attn: list[list[torch.Tensor]] = []
        self.outputs: list[torch.Tensor] = []
        self._capture = Attn1Capture(unet, detach=True)

    def __enter__(self) -> "_UNetRecorder":
        def before(module, args, kwargs):
            self.calls.append((_clone(args), _clone(kwargs)))

        def after(module, args, kwargs, output):
            self.attn.append([t.clone() for t in self._capture.outputs])
            sample = output[0] if isinstance(output, tuple) else output.sample
            self.outputs.append(sample.detach().clone())

        self._capture.__enter__()
        self._handles = [self.unet.register_forward_pre_hook(before, with_kwargs=True),
                         self.unet.register_forward_hook(after, with_kwargs=True)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._capture.__exit__(*exc)


def _render(pipe, prompt: str, width: int, height: int, steps: int, guidance: float, seed: int, device) -> np.ndarray:
    generator = torch.Generator(device=device).manual_seed(seed)
    output = pipe(prompt=prompt, width=width, height=height, num_inference_steps=steps, guidance_scale=guidance,
                  generator=generator, output_type="np")
    return np.asarray(output.images[0], dtype=np.float64)  # (H, W, 3) in [0, 1]


def load_student(location: str, unet) -> LinFusion:
    """LinFusion weights from a folder, or `from_unet` (the untrained starting point, as a baseline)."""
    if location == "from_unet":
        return LinFusion.from_unet(unet)

    with hub_offline():
        return LinFusion.from_pretrained(location, torch_dtype=unet.dtype, device=unet.device)


@torch.no_grad()
def evaluate(base: str, linfusion: str, prompts: list[str], *, size: int | None = None, steps: int = 20,
             guidance: float = 7.5, seed: int = 0, device: str | None = None, dtype: str | None = None,
             image_dir: str | Path | None = None, registry) -> EvalReport:
    """Compare a LinFusion student with its softmax teacher (see the module docstring).

    Args:
        base: registry name or diffusers pipeline folder (the teacher).
        linfusion: a LinFusion folder (an output of `linstudio distill`, or a checkpoint), or `from_unet`.
        prompts: the prompt set; each renders once per model with seed `seed + index`.
        size: square side in pixels; None: the model's native size.
        image_dir: where to write teacher-NN.png / student-NN.png; None writes nothing.
        registry: where a registry name for `base` is looked up (the studio's `ModelRegistry`).
    """
    if not prompts:
        raise ValueError("distill-eval needs at least one prompt")
    # 1. Models: the base pipeline (teacher) and the LinFusion layers for the student
    model = resolve_base(base, registry)
    side = size or model.native_size
    if side <= 0 or side % 8:
        raise ValueError(f"size {side}: must be a positive multiple of 8")
    torch_device = resolve_device(device)
    pipe = load_pipeline(model)
    pipe.to(torch_device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if torch_dtype != torch.float32:  # (a no-op cast would still make diffusers warn)
        pipe.to(dtype=torch_dtype)
    student = load_student(linfusion, pipe.unet)
    report = EvalReport(base=base, linfusion=linfusion, size=(side, side), steps=steps, guidance=guidance, seed=seed)
    names = Attn1Capture(pipe.unet).names
    layer_errors = np.zeros(len(names))
    calls = 0
    if image_dir is not None:
        Path(image_dir).mkdir(parents=True, exist_ok=True)

    for index, prompt in enumerate(prompts):
        # 2. Teacher: render, recording every UNet call
        with _UNetRecorder(pipe.unet) as recorder:
            teacher_image = _render(pipe, prompt, side, side, steps, guidance, seed + index, torch_device)
        # 3. Student: the teacher's inputs (teacher-forced), then its own render from the same seed
        student.mount(pipe.unet)
        try:
            noise_errors = []
            for (args, kwargs), teacher_attn, teacher_out in zip(recorder.calls, recorder.attn, recorder.outputs):
                with Attn1Capture(pipe.unet, detach=True) as capture:
                    output = pipe.unet(*args, **kwargs)
                sample = output[0] if isinstance(output, tuple) else output.sample
                noise_errors.append(relative_error(sample, teacher_out))
                layer_errors += [relative_error(s, t) for s, t in zip(capture.outputs, teacher_attn)]
                calls += 1
            student_image = _render(pipe, prompt, side, side, steps, guidance, seed + index, torch_device)
        finally:
            LinFusion.unmount(pipe.unet)
        rmse = float(np.sqrt(np.mean((student_image - teacher_image) ** 2)))
        report.prompts.append({"prompt": prompt, "seed": seed + index, "image_rmse": rmse, "image_psnr": psnr(rmse),
                               "noise_error": float(np.mean(noise_errors))})
        if image_dir is not None:
            from PIL import Image

            for role, image in (("teacher", teacher_image), ("student", student_image)):
                Image.fromarray((image * 255).round().astype(np.uint8)).save(Path(image_dir) / f"{role}-{index:02d}.png")

    # 4. Averages
    layer_errors /= max(calls, 1)
    report.layers = [{"name": name, "attention_error": float(error)} for name, error in zip(names, layer_errors)]
    report.attention_error = float(layer_errors.mean())
    report.noise_error = float(np.mean([p["noise_error"] for p in report.prompts]))
    report.image_rmse = float(np.mean([p["image_rmse"] for p in report.prompts]))
    report.image_psnr = psnr(report.image_rmse)
    return report
