"""LinFusion against SDPA on a GPU: the real SD-1.5 and SD-XL architectures, random weights.

Speed and memory do not depend on the weights' values, so nothing is downloaded: the UNets and
the VAE are built straight on the device from their published configurations (dict literals
below) with random bf16 weights. For each model and size, each arm (LinFusion's linear attention,
the base model's SDPA) runs `--steps` UNet steps with classifier-free guidance (batch 2) under the
same memory settings, then a tiled VAE decode; the script records seconds and peak memory
(torch.cuda.max_memory_allocated) and writes its JSON after every size, so a run cut off by its
time limit still reports what it measured.

Budget: an arm is skipped when its predicted time (its last measured size scaled by the token
count: linearly for LinFusion, quadratically for SDPA, which on a GPU does not run out of memory
but gets slow) would not fit in the time left. The whole run targets `--budget-s` (280 s default,
inside 5 minutes on one H100).

    python bench/gpu.py --out bench/gpu.json --update-docs      # on the GPU machine
    python bench/gpu.py --tiny --out /tmp/gpu-tiny.json          # on a CPU, tiny models, < 1 min

`--update-docs` writes the table into docs/benchmarks.md between `<!-- bench:gpu -->` markers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, also when loaded by path
from benchdocs import update_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Published diffusers configurations (runwayml/stable-diffusion-v1-5 and
# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json and vae/config.json).
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 768, "attention_head_dim": 8,
}
SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280], "layers_per_block": 2, "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048, "attention_head_dim": [5, 10, 20], "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32, "act_fn": "silu",
}
SD_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "sample_size": 512,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}
SIZES = [(1024, 1024), (2048, 2048), (4096, 4096), (8192, 8192), (16384, 8192)]
TINY_SIZES = [(64, 64), (128, 128), (256, 128)]
ARMS = ("linfusion", "sdpa")


def build(model: str, tiny: bool, device, dtype):
    """(unet, vae, text_dim, sdxl) built on `device` with random weights in `dtype`."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if tiny:
        from linfusion_devkit.tiny import tiny_unet_config, tiny_vae_config

        family = "sdxl" if model == "sdxl" else "sd15"
        unet_config, vae_config = tiny_unet_config(family), tiny_vae_config()
    else:
        unet_config, vae_config = (SDXL_UNET if model == "sdxl" else SD15_UNET), SD_VAE
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in bf16 on the device: no fp32 copy
    try:
        with torch.device(device), torch.no_grad():
            unet = UNet2DConditionModel(**unet_config).eval()
            vae = AutoencoderKL(**vae_config).eval()
    finally:
        torch.set_default_dtype(previous)
    return unet, vae, unet_config["cross_attention_dim"], unet_config.get("addition_embed_type") == "text_time"


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_arm(unet, vae, text_dim: int, sdxl: bool, width: int, height: int, steps: int, low_memory: bool,
            device, dtype, tile_px: int) -> dict:
    """`steps` CFG UNet steps at width x height, then a tiled VAE decode; seconds and peak memory."""
    import torch

    from linfusion_engine import tiling
    from linfusion_engine.memory import low_memory_mode

    generator = torch.Generator(device=device).manual_seed(0)
    latents = torch.randn(1, 4, height // 8, width // 8, generator=generator, device=device, dtype=dtype)  # (1, 4, h, w)
    text = torch.randn(2, 77, text_dim, generator=generator, device=device, dtype=dtype)  # (2, 77, D): uncond, cond
    extra = {}
    if sdxl:
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        time_ids = torch.tensor([[height, width, 0, 0, height, width]] * 2, device=device, dtype=dtype)  # (2, 6)
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled, generator=generator, device=device,
                                                                  dtype=dtype), "time_ids": time_ids}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    saving = low_memory_mode(unet, device) if low_memory else contextlib.nullcontext()
    sync(device)
    started = time.perf_counter()
    with torch.no_grad(), saving:
        for index in range(steps):
            timestep = torch.tensor(999 - index * (1000 // steps), device=device)
            pair = torch.cat([latents, latents])  # (2, 4, h, w): CFG batch
            eps = unet(pair, timestep, text, **extra, return_dict=False)[0]  # (2, 4, h, w)
            uncond, cond = eps.chunk(2)  # (1, 4, h, w) each
            latents = latents - 0.1 * (uncond + 7.5 * (cond - uncond))  # a stand-in update; the time is the UNet's
        sync(device)
        unet_s = time.perf_counter() - started
        image = tiling.decode(vae, latents, "", tile_px if max(width, height) > tile_px else None)  # (1, 3, H, W)
        sync(device)
    total_s = time.perf_counter() - started
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    assert image.shape[-2:] == (height, width), image.shape
    return {"unet_s": round(unet_s, 3), "total_s": round(total_s, 3),
            "peak_bytes": peak, "peak_gib": round(peak / 1024**3, 2) if peak else None}


def predict(previous: dict | None, arm: str, tokens: int) -> float | None:
    """Seconds for `arm` at `tokens`, from its last measured size; None without one."""
    if not previous:
        return None
    ratio = tokens / previous["tokens"]
    return previous["total_s"] * (ratio if arm == "linfusion" else ratio**2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU in fp32 (develop and test)")
    parser.add_argument("--models", default="sd15,sdxl")
    parser.add_argument("--steps", type=int, default=None, help="UNet steps (default 8; 2 with --tiny)")
    parser.add_argument("--budget-s", type=float, default=280.0, help="time for the whole run, building included")
    parser.add_argument("--low-memory", choices=("auto", "on", "off"), default="auto",
                        help="the same for both arms; auto: on where the planner says a normal run would not fit")
    parser.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default=None,
                        help="default: bfloat16 on a GPU, float32 on the CPU")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu.json")
    parser.add_argument("--update-docs", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)

    import torch

    from linfusion_engine import planner
    from linfusion_engine.linfusion import LinFusion
    from linfusion_engine.memory import device_budget_bytes

    started = time.perf_counter()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if device.type == "cpu" else torch.bfloat16)
    steps = args.steps or (2 if args.tiny else 8)
    sizes = TINY_SIZES if args.tiny else SIZES
    tile_px = 128 if args.tiny else tiling_tile()
    budget_bytes = device_budget_bytes(device)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU",
              "dtype": str(dtype).removeprefix("torch."), "steps": steps, "tiny": args.tiny,
              "torch": torch.__version__, "budget_s": args.budget_s, "command": " ".join(["python", "bench/gpu.py"] + (argv or sys.argv[1:])),
              "results": []}

    def write() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))

    for model in args.models.split(","):
        unet, vae, text_dim, sdxl = build(model, args.tiny, device, dtype)
        linfusion = LinFusion.from_unet(unet)
        last: dict[str, dict] = {}
        for arm in ARMS:  # warm-up (kernel loading, autotuning), not recorded
            linfusion.mount(unet) if arm == "linfusion" else LinFusion.unmount(unet)
            run_arm(unet, vae, text_dim, sdxl, *sizes[0], 1, False, device, dtype, tile_px)
        for width, height in sizes:
            tokens = (width // 8) * (height // 8)
            plan = planner.plan_render("direct", width, height, "sdxl" if sdxl else "sd15", 64 if args.tiny else 512)
            needs = planner.estimate(plan, steps=steps, family="sdxl" if sdxl else "sd15", tiny=args.tiny,
                                     dtype_bytes=dtype.itemsize, device_kind=device.type, budget_bytes=budget_bytes)
            low = {"on": True, "off": False}.get(args.low_memory, bool(budget_bytes and needs.peak_bytes > budget_bytes))
            row = {"model": model, "width": width, "height": height, "tokens": tokens, "low_memory": low}
            for arm in ARMS:
                left = args.budget_s - (time.perf_counter() - started)
                guess = predict(last.get(arm), arm, tokens)
                if guess is not None and guess > left:
                    row[arm] = {"skipped": f"predicted {guess:.0f} s, {left:.0f} s left"}
                    continue
                if arm == "linfusion":
                    linfusion.mount(unet)
                else:
                    LinFusion.unmount(unet)
                try:
                    row[arm] = run_arm(unet, vae, text_dim, sdxl, width, height, steps, low, device, dtype, tile_px)
                    last[arm] = {**row[arm], "tokens": tokens}
                except torch.OutOfMemoryError as exc:
                    row[arm] = {"error": f"out of memory: {str(exc).splitlines()[0][:160]}"}
                    torch.cuda.empty_cache()
            if "unet_s" in row.get("linfusion", {}) and "unet_s" in row.get("sdpa", {}):
                row["speedup"] = round(row["sdpa"]["total_s"] / row["linfusion"]["total_s"], 2)
            report["results"].append(row)
            report["elapsed_s"] = round(time.perf_counter() - started, 1)
            write()
            print(json.dumps(row), flush=True)
        del unet, vae, linfusion
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    write()
    if args.update_docs:
        update_docs(report)
    return 0


def tiling_tile() -> int:
    from linfusion_engine.tiling import TILE_PX

    return TILE_PX


def _cell(arm: dict | None) -> str:
    if not arm:
        return "-"
    if "total_s" in arm:
        memory = f", {arm['peak_gib']} GiB" if arm.get("peak_gib") is not None else ""
        return f"{arm['total_s']} s{memory}"
    return arm.get("skipped") or arm.get("error", "-")


def to_markdown(report: dict) -> str:
    lines = [f"Device: {report['device']}, {report['dtype']}, {report['steps']} UNet steps with CFG (batch 2) "
             f"+ tiled VAE decode, random weights; torch {report['torch']}; whole run {report.get('elapsed_s')} s.",
             f"Command: `{report['command']}`", "",
             "| model | size | low-memory | LinFusion (time, peak) | SDPA (time, peak) | speed-up |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in report["results"]:
        lines.append(f"| {row['model']} | {row['width']}x{row['height']} | {'on' if row['low_memory'] else 'off'} | "
                     f"{_cell(row.get('linfusion'))} | {_cell(row.get('sdpa'))} | {row.get('speedup', '-')} |")
    return "\n".join(lines)


def update_docs(report: dict, path: Path = ROOT / "docs" / "benchmarks.md") -> None:
    """Replace the text between the `bench:gpu` markers (appending the section if absent)."""
    update_section("gpu", to_markdown(report), path, heading="## GPU: LinFusion vs SDPA, SD-1.5 and SD-XL")


if __name__ == "__main__":
    sys.exit(main())
