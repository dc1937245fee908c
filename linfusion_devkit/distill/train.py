"""The distillation run: accelerate for devices, mixed precision and multi-GPU; exact resume.

One optimizer step is `gradient_accumulation` micro-batches of `batch_size` images per process.
Everything random in a micro-batch (which images, the VAE latent sample, the noise, the
timesteps) is drawn from (seed, micro-batch number, process rank) alone, so a run resumed from a
checkpoint continues the same loss curve as a run that was never interrupted.

Outputs:
- OUT/config.json + OUT/diffusion_pytorch_model.safetensors: the layers in the published
  LinFusion format (written at the end; `LinFusion.from_pretrained(OUT)` loads them);
- OUT/metrics.jsonl: one JSON line per logged step (`step`, `loss`, `loss_noise`,
  `loss_teacher`, `loss_feature`, `lr`, `seconds`);
- OUT/distill.json: what was distilled from what, for people;
- CHECKPOINTS/step-NNNNNNNN/: see `checkpoints.py` (default CHECKPOINTS is OUT-checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from linfusion_devkit.distill.checkpoints import (
    default_checkpoint_dir, list_checkpoints, load_checkpoint, save_checkpoint)
from linfusion_devkit.distill.data import CaptionedImages, StepSampler, find_examples
from linfusion_devkit.distill.loss import Attn1Capture, LossTerms, distillation_loss, training_target
from linfusion_devkit.distill.setup import (
    INITS, build_linfusion, encode_captions, load_pipeline, resolve_base, student_and_teacher)

METRICS_NAME = "metrics.jsonl"
INFO_NAME = "distill.json"
MIXED_PRECISIONS = ("no", "fp16", "bf16")
SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Settings a resumed run must share with the checkpoint: any of them changes the curve.
RESUME_KEYS = ("base", "data", "resolution", "batch_size", "gradient_accumulation", "learning_rate",
               "weight_decay", "seed", "init", "projection_mid_dim", "max_grad_norm")


class DistillRunError(RuntimeError):
    """The output folder's state does not allow this run (e.g. an earlier run there without --resume)."""


@dataclass
class DistillConfig:
    """One distillation run.

    Args:
        base: a registry name or a diffusers pipeline folder (SD-1.x/2.x or SD-XL).
        data: a folder of images with caption sidecars, or a JSONL of {image, caption}.
        out: the output folder (published LinFusion format at the end, plus metrics.jsonl).
        steps: optimizer steps to reach (with --resume: in total, not additional).
        batch_size: images per micro-batch per process.
        gradient_accumulation: micro-batches per optimizer step.
        learning_rate, weight_decay: AdamW's (published: 1e-4, 0).
        resolution: square training size in pixels; None: the model's native size.
        seed: data order, noise, timesteps and random init all follow from it.
        init: `teacher` (attn1's own Q/K/V/out, identity MLPs) or `random`.
        projection_mid_dim: MLP width; None follows the published checkpoints (C, or C/16 for SD-XL).
        mixed_precision: `no`, `fp16` or `bf16` (accelerate's autocast; the layers train in fp32).
        max_grad_norm: gradient clipping; None turns it off.
        checkpoint_every: steps between checkpoints (the last step always gets one).
        keep_checkpoints: how many of the newest checkpoints to keep.
        checkpoint_dir: None means OUT-checkpoints next to OUT.
        log_every: steps between metrics lines (each line averages the steps since the last).
        resume: continue from the newest checkpoint (a fresh start when there is none).
        save_dtype: dtype of the final weights (published files are fp16).
        num_workers: DataLoader worker processes for image decoding.
        cpu: force the CPU even where CUDA is present.
    """

    base: str
    data: str
    out: str
    steps: int = 1000
    batch_size: int = 1
    gradient_accumulation: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    resolution: int | None = None
    seed: int = 0
    init: str = "teacher"
    projection_mid_dim: int | None = None
    mixed_precision: str = "no"
    max_grad_norm: float | None = 1.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    checkpoint_dir: str | None = None
    log_every: int = 1
    resume: bool = False
    save_dtype: str = "fp16"
    num_workers: int = 0
    cpu: bool = False

    def check(self) -> None:
        """Raise a short ValueError naming the first invalid setting."""
        for name in ("steps", "batch_size", "gradient_accumulation", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.init not in INITS:
            raise ValueError(f"init {self.init!r}: must be one of {', '.join(INITS)}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision {self.mixed_precision!r}: must be one of {', '.join(MIXED_PRECISIONS)}")
        if self.save_dtype not in SAVE_DTYPES:
            raise ValueError(f"save_dtype {self.save_dtype!r}: must be one of {', '.join(SAVE_DTYPES)}")
        if self.resolution is not None and (self.resolution <= 0 or self.resolution % 8):
            raise ValueError(f"resolution {self.resolution}: must be a positive multiple of 8")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}")


@dataclass
class DistillResult:
    out: Path
    steps: int
    resumed_from: int | None
    metrics: list[dict] = field(default_factory=list)  # the lines this call logged (main process only)
    main_process: bool = True  # False on the other processes of a multi-GPU run


def micro_batch_seed(seed: int, micro_batch: int, rank: int) -> int:
    """A 63-bit seed for one micro-batch on one process, independent of every other micro-batch."""
    return int(np.random.SeedSequence([seed, micro_batch, rank]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def read_metrics(out: str | Path) -> list[dict]:
    """The metrics lines of a run, as dicts."""
    path = Path(out) / METRICS_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rewrite_metrics(path: Path, upto_step: int) -> None:
    """Keep the lines of steps <= upto_step: an interrupted run may have logged past its last checkpoint."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= upto_step]
    path.write_text("".join(line + "\n" for line in kept))


class _Run:
    """The state of one run between setup and the end of the loop (a class to keep `distill` readable)."""

    def __init__(self, config: DistillConfig, registry) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        self.config = config
        # accelerate keeps the mixed-precision setting in a process-wide singleton and refuses a second
        # Accelerator with another one; a process may run several distillations in turn (a notebook, the
        # tests). Only that state is cleared: the process group and device (PartialState) stay as launched.
        AcceleratorState._reset_state()
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu)
        self.base = resolve_base(config.base, registry)
        self.examples = find_examples(config.data)
        self.resolution = config.resolution or self.base.native_size
        self.out = Path(config.out).expanduser().resolve()
        self.checkpoint_dir = (Path(config.checkpoint_dir).expanduser().resolve() if config.checkpoint_dir
                               else default_checkpoint_dir(self.out))
        self.weight_dtype = {"no": torch.float32, "fp16": torch.float16,
                             "bf16": torch.bfloat16}[config.mixed_precision]

    def fingerprint(self) -> dict[str, Any]:
        """The settings recorded in every checkpoint and compared on resume (RESUME_KEYS)."""
        config = self.config
        return {"base": str(self.base.folder), "data": str(Path(config.data).expanduser().resolve()),
                "resolution": self.resolution, "batch_size": config.batch_size,
                "gradient_accumulation": config.gradient_accumulation, "learning_rate": config.learning_rate,
                "weight_decay": config.weight_decay, "seed": config.seed, "init": config.init,
                "projection_mid_dim": config.projection_mid_dim, "max_grad_norm": config.max_grad_norm,
                "num_processes": self.accelerator.num_processes, "mixed_precision": config.mixed_precision}

    def starting_checkpoint(self):
        """The checkpoint to resume from, or None for a fresh start; refuses to overwrite an earlier run."""
        checkpoints = list_checkpoints(self.checkpoint_dir)
        metrics = self.out / METRICS_NAME
        if not self.config.resume:
            if checkpoints or metrics.is_file():
                raise DistillRunError(
                    f"{self.out}: an earlier distillation run is there ({len(checkpoints)} checkpoint(s) in "
                    f"{self.checkpoint_dir}); pass --resume to continue it, or choose another --out")
            return None
        if not checkpoints:
            return None
        latest = checkpoints[-1]
        now = self.fingerprint()
        differences = [f"{key}: checkpoint {latest.state.get(key)!r}, now {now[key]!r}" for key in RESUME_KEYS
                       if latest.state.get(key) != now[key]]
        if differences:
            raise DistillRunError(f"{latest.folder}: cannot resume with different settings (the curve would "
                                  "change): " + "; ".join(differences))
        if latest.step > self.config.steps:
            raise DistillRunError(f"{latest.folder}: the checkpoint is at step {latest.step}, beyond --steps "
                                  f"{self.config.steps}; pass --steps {latest.step} or more")
        return latest


def _loader(dataset: CaptionedImages, config: DistillConfig, start_batch: int, rank: int, world: int):
    from torch.utils.data import DataLoader

    sampler = StepSampler(len(dataset), config.seed, config.batch_size, start_batch, rank, world)
    return iter(DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                           num_workers=config.num_workers, persistent_workers=config.num_workers > 0))


def _micro_batch_loss(run: _Run, models, student, scheduler, batch: dict, micro_batch: int) -> LossTerms:
    """Encode, noise, run teacher then student on the same inputs, and return the loss terms."""
    accelerator = run.accelerator
    device = accelerator.device
    generator = torch.Generator().manual_seed(micro_batch_seed(run.config.seed, micro_batch, accelerator.process_index))
    pipe = models.pipeline
    with torch.no_grad():
        # 1. Latents: the VAE posterior sampled with this micro-batch's generator (drawn on the CPU
        #    so every device gives the same numbers)
        pixels = batch["pixels"].to(device=device, dtype=run.weight_dtype)  # (B, 3, R, R)
        posterior = pipe.vae.encode(pixels).latent_dist
        sample = torch.randn(posterior.mean.shape, generator=generator).to(device)  # (B, 4, R/8, R/8)
        latents = (posterior.mean.float() + posterior.std.float() * sample) * pipe.vae.config.scaling_factor
        # 2. Noise and timesteps (uniform over the training schedule)
        noise = torch.randn(latents.shape, generator=generator).to(device)  # (B, 4, R/8, R/8)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator).to(device)  # (B,)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = training_target(scheduler, latents, noise, timesteps)
        conditioning = encode_captions(pipe, models.family, list(batch["caption"]), run.resolution, device)
        # 3. Teacher: softmax attention, frozen
        with Attn1Capture(models.teacher, detach=True) as teacher_capture, accelerator.autocast():
            teacher_pred = models.teacher(noisy, timesteps, **conditioning).sample
    # 4. Student: the same inputs through the LinFusion layers, with grad
    # (`student` is the accelerate-prepared wrapper -- DDP on several GPUs; hooks go on the bare UNet)
    with Attn1Capture(models.student) as student_capture, accelerator.autocast():
        student_pred = student(noisy, timesteps, **conditioning).sample
    return distillation_loss(student_pred, teacher_pred, target, student_capture.outputs, teacher_capture.outputs)


def distill(config: DistillConfig, *, registry, progress: bool = True,
            on_log: Callable[[dict], None] | None = None) -> DistillResult:
    """Train LinFusion layers for `config.base` by distillation; see the module docstring for the outputs.

    Args:
        config: the run's settings (checked first).
        registry: where registry names are looked up (the studio's: `ModelRegistry.from_settings(settings)`).
        progress: show a progress bar with the loss terms (main process only).
        on_log: called with each metrics line as it is written (main process only).
    """
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    # 1. Check inputs and the output folder's state, before loading anything heavy
    config.check()
    run = _Run(config, registry)
    accelerator = run.accelerator
    checkpoint = run.starting_checkpoint()
    start_step = checkpoint.step if checkpoint else 0

    # 2. Models: student (base UNet + LinFusion), frozen teacher, frozen encoders
    pipe = load_pipeline(run.base)
    linfusion = build_linfusion(pipe.unet, config.init, config.seed, config.projection_mid_dim)
    models = student_and_teacher(pipe, run.base.family, linfusion)
    for frozen in (pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None), models.teacher):
        if frozen is not None:
            # nn.Module.to: diffusers' ModelMixin.to warns on every dtype cast, even a no-op one
            torch.nn.Module.to(frozen, accelerator.device, dtype=run.weight_dtype)
    models.student.to(accelerator.device)  # stays fp32: its LinFusion layers are the master weights
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    optimizer = torch.optim.AdamW(models.trainable_parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    student, optimizer = accelerator.prepare(models.student, optimizer)
    if checkpoint is not None:
        load_checkpoint(checkpoint, linfusion, optimizer)

    # 3. Data, from the micro-batch the run stopped at
    dataset = CaptionedImages(run.examples, run.resolution)
    accumulation = config.gradient_accumulation
    batches = _loader(dataset, config, start_step * accumulation, accelerator.process_index,
                      accelerator.num_processes)

    # 4. Output folder and metrics (an interrupted run may have logged past its checkpoint)
    metrics_path = run.out / METRICS_NAME
    if accelerator.is_main_process:
        run.out.mkdir(parents=True, exist_ok=True)
        if checkpoint is not None:
            _rewrite_metrics(metrics_path, start_step)
        elif metrics_path.exists():
            metrics_path.unlink()  # --resume with no checkpoint: a fresh start
    accelerator.wait_for_everyone()

    # 5. Training loop
    bar = tqdm(total=config.steps, initial=start_step, disable=not (progress and accelerator.is_main_process),
               desc="distill", unit="step")
    window, window_steps, started = torch.zeros(4, dtype=torch.float64), 0, time.perf_counter()
    logged: list[dict] = []
    trainable = models.trainable_parameters()
    for step in range(start_step, config.steps):
        totals = torch.zeros(4, dtype=torch.float64)
        for micro in range(accumulation):
            batch = next(batches)
            last = micro == accumulation - 1
            sync = contextlib.nullcontext() if last else accelerator.no_sync(student)
            with sync:
                terms = _micro_batch_loss(run, models, student, scheduler, batch, step * accumulation + micro)
                accelerator.backward(terms.total / accumulation)
            totals += torch.tensor([float(terms.total.detach()), float(terms.noise), float(terms.teacher),
                                    float(terms.feature)], dtype=torch.float64) / accumulation
        if config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        window += accelerator.reduce(totals.to(accelerator.device), reduction="mean").cpu()
        window_steps += 1
        if done % config.log_every == 0 or done == config.steps:
            values = (window / window_steps).tolist()
            line = {"step": done, "loss": values[0], "loss_noise": values[1], "loss_teacher": values[2],
                    "loss_feature": values[3], "lr": config.learning_rate,
                    "seconds": round(time.perf_counter() - started, 3)}
            window, window_steps = torch.zeros(4, dtype=torch.float64), 0
            if accelerator.is_main_process:
                with metrics_path.open("a") as handle:
                    handle.write(json.dumps(line) + "\n")
                logged.append(line)
                if on_log is not None:
                    on_log(line)
                bar.set_postfix(loss=f"{values[0]:.4f}", noise=f"{values[1]:.4f}", teacher=f"{values[2]:.4f}",
                                feature=f"{values[3]:.4f}")
        bar.update(1)
        if done % config.checkpoint_every == 0 or done == config.steps:
            if accelerator.is_main_process:
                save_checkpoint(run.checkpoint_dir, done, linfusion, optimizer, run.fingerprint(),
                                config.keep_checkpoints)
            accelerator.wait_for_everyone()
    bar.close()

    # 6. The result in the published format, and what it came from
    if accelerator.is_main_process:
        linfusion.save_pretrained(run.out, dtype=SAVE_DTYPES[config.save_dtype])
        info = {"base": config.base, "base_folder": str(run.base.folder), "family": run.base.family,
                "steps": config.steps, "resumed_from": start_step if checkpoint else None,
                "settings": asdict(config), "final": logged[-1] if logged else None,
                "checkpoints": str(run.checkpoint_dir)}
        (run.out / INFO_NAME).write_text(json.dumps(info, indent=1))
    accelerator.wait_for_everyone()
    return DistillResult(out=run.out, steps=config.steps, resumed_from=start_step if checkpoint else None,
                         metrics=logged, main_process=accelerator.is_main_process)
