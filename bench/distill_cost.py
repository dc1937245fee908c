"""What a real distillation costs: training FLOPs per image for SD-1.5 and SD-XL, and GPU hours derived from them.

The published setup (docs/distill.md, from the method's section 4) gives the data (~169k LAION
aesthetic images), the objective and the optimizer, but not the number of steps, the batch size,
the hardware or the hours. So this script derives the cost per epoch over that data:

1. counts the FLOPs of one training image exactly, with torch's FlopCounterMode on the meta device
   (no weights, no GPU): VAE encode + teacher UNet forward (softmax) + student UNet forward and
   backward (LinFusion mounted, only its layers requiring grad) at the native size;
2. converts to GPU hours at an assumed model-FLOPs utilisation (MFU) of the GPU's dense bf16 peak.

The FLOP count is exact for the architecture; the hours are an estimate whose only assumption is
the MFU (stated in the table). Text encoding (CLIP, ~77 tokens) is left out: under 2% of a step.

    .venv/bin/python bench/distill_cost.py [--images 169000] [--mfu 0.35] [--no-write]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, also when loaded by path
from benchdocs import update_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a plain script from a checkout

DOC = REPO / "docs" / "benchmarks.md"
# Dense bf16 peaks from the vendors' data sheets (TFLOP/s, no sparsity).
GPUS = {"A100 (312 TFLOP/s bf16)": 312e12, "H100 SXM (989 TFLOP/s bf16)": 989e12}

# The published UNet and VAE architectures (diffusers configs of SD-1.5 and SD-XL base 1.0).
SD15_UNET = dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=768, attention_head_dim=8)
SDXL_UNET = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                 cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
           layers_per_block=2, latent_channels=4)
MODELS = {"SD-1.5": (SD15_UNET, 512, 768, None), "SD-XL": (SDXL_UNET, 1024, 2048, 1280)}


def count(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def flops_per_image(unet_config: dict, side: int, text_dim: int, pooled_dim: int | None) -> dict[str, float]:
    """FLOPs of each part of one training image's step (batch 1, meta device)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from linfusion_engine.linfusion import LinFusion

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**VAE)
        linfusion = LinFusion(LinFusion.modules_list_for_unet(unet))
    unet.requires_grad_(False)
    latent = torch.randn(1, 4, side // 8, side // 8, device="meta")  # (B, 4, H/8, W/8)
    text = torch.randn(1, 77, text_dim, device="meta")  # (B, tokens, text channels)
    t = torch.tensor([500], device="meta")
    extra = {}
    if pooled_dim is not None:
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled_dim, device="meta"),
                                      "time_ids": torch.randn(1, 6, device="meta")}
    parts = {"vae_encode": count(lambda: vae.encode(torch.randn(1, 3, side, side, device="meta")))}
    parts["teacher_forward"] = count(lambda: unet(latent, t, text, **extra))
    linfusion.mount(unet)

    def student_step():
        unet(latent, t, text, **extra).sample.float().pow(2).mean().backward()

    parts["student_forward_backward"] = count(student_step)
    parts["student_forward"] = count(lambda: unet(latent, t, text, **extra))
    return parts


def report(rows: dict[str, dict[str, float]], images: int, mfu: float, argv: list[str]) -> str:
    lines = [f"Command: `{' '.join(['.venv/bin/python bench/distill_cost.py', *map(shlex.quote, argv)])}`",
             "",
             "Training FLOPs per image at the native size (counted exactly on the meta device), and GPU hours "
             f"per epoch over {images:,} images (the published data set size) at an assumed {mfu:.0%} MFU. "
             "Derived, not published: the method's paper gives neither steps nor hours.",
             "",
             "| model | size | VAE encode | teacher fwd | student fwd | student fwd+bwd | per image | "
             + " | ".join(f"GPU h / epoch, {gpu}" for gpu in GPUS) + " |",
             "| --- | --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in GPUS) + " |"]
    for name, parts in rows.items():
        side = MODELS[name][1]
        total = parts["vae_encode"] + parts["teacher_forward"] + parts["student_forward_backward"]
        hours = [total * images / (peak * mfu) / 3600 for peak in GPUS.values()]
        lines.append(f"| {name} | {side} px | {parts['vae_encode'] / 1e12:.2f} TF | "
                     f"{parts['teacher_forward'] / 1e12:.2f} TF | {parts['student_forward'] / 1e12:.2f} TF | "
                     f"{parts['student_forward_backward'] / 1e12:.2f} TF | {total / 1e12:.2f} TF | "
                     + " | ".join(f"{h:.1f}" for h in hours) + " |")
    return "\n".join(lines)


def write(section: str) -> None:
    update_section("distill-cost", section, DOC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=169_000, help="images per epoch (published: ~169k)")
    parser.add_argument("--mfu", type=float, default=0.35, help="assumed model-FLOPs utilisation")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    rows = {name: flops_per_image(*spec) for name, spec in MODELS.items()}
    section = report(rows, args.images, args.mfu, sys.argv[1:])
    print(section)
    if not args.no_write:
        write(section)


if __name__ == "__main__":
    main()
