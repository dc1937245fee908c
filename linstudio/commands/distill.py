"""`linstudio distill` and `linstudio distill-eval`: LinFusion layers for a studio's own base model.

Published LinFusion weights exist for three base models only, and mounting them on a fine-tune
replaces the fine-tune's own attn1 weights. `distill` trains layers for the studio's model with
the published objective; `distill-eval` tells whether the result is close enough to the model's
own softmax attention. torch, diffusers and accelerate are imported inside the commands only.
Errors print one line and exit with code 2; `distill-eval` exits 1 when a --max-* bound fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import typer

from linfusion_engine.registry import ModelNotAvailableError, ModelRegistry, UnknownModelError
from linstudio_settings import get_settings


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _studio_registry():
    """The model registry the studio's settings name (a broken models.yaml raises ValueError, said as one line)."""
    return ModelRegistry.from_settings(get_settings())


def distill(
    base: str = typer.Option(..., "--base", help="Base model: a registry name or a diffusers pipeline folder."),
    data: Path = typer.Option(..., "--data", help="Folder of images with caption sidecars (.txt), or a JSONL "
                                                 "of {\"image\": PATH, \"caption\": TEXT}."),
    out: Path = typer.Option(..., "--out", help="Output folder: LinFusion weights in the published format, "
                                               "metrics.jsonl, distill.json."),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps in total (with --resume too)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint (fresh start if none)."),
    init: str = typer.Option("teacher", "--init", help="teacher: from the UNet's own attn1 weights; random."),
    batch_size: int = typer.Option(1, "--batch-size", help="Images per micro-batch per process."),
    gradient_accumulation: int = typer.Option(1, "--gradient-accumulation", help="Micro-batches per step."),
    learning_rate: float = typer.Option(1e-4, "--lr", help="AdamW learning rate (published: 1e-4)."),
    resolution: int | None = typer.Option(None, "--resolution", help="Training side in pixels; default: native."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no, fp16 or bf16."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="Steps between checkpoints."),
    keep_checkpoints: int = typer.Option(2, "--keep-checkpoints", help="Newest checkpoints kept."),
    checkpoint_dir: Path | None = typer.Option(None, "--checkpoint-dir", help="Default: OUT-checkpoints next to OUT."),
    log_every: int = typer.Option(1, "--log-every", help="Steps between metrics.jsonl lines."),
    seed: int = typer.Option(0, "--seed", help="Seeds data order, noise, timesteps and random init."),
    save_dtype: str = typer.Option("fp16", "--save-dtype", help="Dtype of the saved weights: fp16, bf16, fp32."),
    num_workers: int = typer.Option(0, "--num-workers", help="DataLoader processes decoding images."),
    cpu: bool = typer.Option(False, "--cpu", help="Train on the CPU even where CUDA is present."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar with the loss terms."),
) -> None:
    """Distil LinFusion layers for a base model (published objective); multi-GPU with `accelerate launch`."""
    # lazy: torch stays out of linstudio validate
    # (tests/manifests/test_manifest_cli.py::test_validate_imports_neither_torch_nor_diffusers)
    from linfusion_devkit.distill.data import DistillDataError
    from linfusion_devkit.distill.setup import DistillSetupError
    from linfusion_devkit.distill.train import DistillConfig, DistillRunError
    from linfusion_devkit.distill.train import distill as run_distill

    config = DistillConfig(
        base=base, data=str(data), out=str(out), steps=steps, batch_size=batch_size,
        gradient_accumulation=gradient_accumulation, learning_rate=learning_rate, resolution=resolution,
        seed=seed, init=init, mixed_precision=mixed_precision, checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints, checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
        log_every=log_every, resume=resume, save_dtype=save_dtype, num_workers=num_workers, cpu=cpu)
    try:
        config.check()
        result = run_distill(config, registry=_studio_registry(), progress=progress)
    except (ValueError, DistillDataError, DistillSetupError, DistillRunError, ModelNotAvailableError,
            UnknownModelError) as exc:
        _fail(str(exc).replace("\n", " "))
    if not result.main_process:  # one report per run, not one per GPU
        return
    final = result.metrics[-1] if result.metrics else None
    typer.echo(f"LinFusion weights for {base} in {result.out} (step {result.steps}"
               + (f", resumed from step {result.resumed_from}" if result.resumed_from is not None else "") + ")")
    if final:
        typer.echo(f"final loss {final['loss']:.5f} (noise {final['loss_noise']:.5f}, teacher "
                   f"{final['loss_teacher']:.5f}, feature {final['loss_feature']:.5f})")
    typer.echo(f"check it: linstudio distill-eval --base {base} --linfusion {result.out} --prompt '...'")
    typer.echo(f"use it:   linstudio models add NAME --base BASE_FOLDER --linfusion {result.out} --family FAMILY")


def distill_eval(
    base: str = typer.Option(..., "--base", help="Base model (the teacher): a registry name or pipeline folder."),
    linfusion: str = typer.Option(..., "--linfusion", help="LinFusion folder (distill output or checkpoint), "
                                                           "or from_unet for the untrained starting point."),
    prompts_file: Path | None = typer.Option(None, "--prompts", help="Text file, one prompt per line."),
    prompt: list[str] = typer.Option([], "--prompt", help="A prompt; repeatable."),
    size: int | None = typer.Option(None, "--size", help="Square side in pixels; default: native."),
    steps: int = typer.Option(20, "--steps", help="Denoising steps per render."),
    guidance: float = typer.Option(7.5, "--guidance", help="Classifier-free guidance scale."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first prompt (then +1 per prompt)."),
    device: str | None = typer.Option(None, "--device", help="cuda, cuda:1, cpu; default: CUDA if present."),
    images: Path | None = typer.Option(None, "--images", help="Write teacher-NN.png / student-NN.png here."),
    report: Path | None = typer.Option(None, "--report", help="Write the JSON report to this file."),
    max_attention_error: float | None = typer.Option(None, "--max-attention-error",
                                                     help="Exit 1 when the mean attention error is above."),
    max_image_rmse: float | None = typer.Option(None, "--max-image-rmse", help="Exit 1 when image RMSE is above."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of a table."),
) -> None:
    """Compare a distilled student with its softmax teacher: per-layer attention and image error."""
    # lazy: torch stays out of linstudio validate
    # (tests/manifests/test_manifest_cli.py::test_validate_imports_neither_torch_nor_diffusers)
    from linfusion_devkit.distill.evaluate import evaluate
    from linfusion_devkit.distill.setup import DistillSetupError
    from linfusion_engine.linfusion import LinFusionLayoutError, LinFusionWeightsError

    prompts = list(prompt)
    if prompts_file is not None:
        if not prompts_file.is_file():
            _fail(f"--prompts {prompts_file}: no such file")
        prompts += [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()]
    if not prompts:
        _fail("no prompts: give --prompt TEXT (repeatable) or --prompts FILE")
    try:
        result = evaluate(base, linfusion, prompts, size=size, steps=steps, guidance=guidance, seed=seed,
                          device=device, image_dir=images, registry=_studio_registry())
    except (ValueError, DistillSetupError, LinFusionLayoutError, LinFusionWeightsError, ModelNotAvailableError,
            UnknownModelError) as exc:
        _fail(str(exc).replace("\n", " "))
    data = result.to_dict()
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(data, indent=2))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        width = max(len(layer["name"]) for layer in result.layers)
        typer.echo(f"{'attn1 layer'.ljust(width)}  attention error")
        for layer in result.layers:
            typer.echo(f"{layer['name'].ljust(width)}  {layer['attention_error']:.4f}")
        typer.echo(f"mean attention error {result.attention_error:.4f}, noise-prediction error "
                   f"{result.noise_error:.4f}, image RMSE {result.image_rmse:.4f} ({result.image_psnr:.1f} dB PSNR)")
    failures = []
    if max_attention_error is not None and result.attention_error > max_attention_error:
        failures.append(f"attention error {result.attention_error:.4f} > --max-attention-error {max_attention_error}")
    if max_image_rmse is not None and result.image_rmse > max_image_rmse:
        failures.append(f"image RMSE {result.image_rmse:.4f} > --max-image-rmse {max_image_rmse}")
    if failures:
        typer.echo("not good enough: " + "; ".join(failures), err=True)
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the top-level app."""
    app.command("distill")(distill)
    app.command("distill-eval")(distill_eval)
