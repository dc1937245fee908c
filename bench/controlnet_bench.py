"""ControlNet benchmark: the ControlNet's own self-attention, softmax (upstream) vs linear (ours), on the CPU.

Upstream LinFusion leaves a ControlNet's attn1 quadratic, so a large render with a ControlNet
still pays softmax attention there. This times one forward of the tiny SD-1.5 ControlNet
(`linfusion_devkit.tiny_conditioning`, batch 2, fp32, one control map) at 256/512/1024 px with
its softmax processors and with `ControlNetBank.set_attention(..., linear=True)`, in one process.

Prints a Markdown report and writes it between the `<!-- bench:controlnet -->` markers of
docs/benchmarks.md (other sections are left alone). Medians of a few runs, one thread.

    .venv/bin/python bench/controlnet_bench.py [--threads N] [--repeats R] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a plain script from a checkout

from linfusion_engine.conditioning.controlnet import ControlNetBank, controlnet_self_attention  # noqa: E402
from linfusion_engine.engine import Engine  # noqa: E402
from linfusion_engine.registry import ModelRegistry  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, also when loaded by path
from benchdocs import update_section  # noqa: E402
from timing import median_time  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
SIZES = (256, 512, 1024)
BATCH, TEXT_TOKENS = 2, 77



def fmt(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def run(repeats: int) -> list[tuple[int, int, float, float]]:
    home = Path(os.environ.get("LINSTUDIO_HOME", Path(tempfile.gettempdir()) / "linstudio-bench"))
    registry = ModelRegistry(home / "models.yaml", home / "models")
    engine = Engine("tiny-sd15", registry=registry, device="cpu")
    engine.load()
    bank = ControlNetBank(registry, engine.entry, device=engine.device, dtype=engine.dtype)
    controlnet = bank.get("canny")
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(BATCH, TEXT_TOKENS, engine.pipeline.unet.config.cross_attention_dim, generator=generator)
    rows = []
    for size in SIZES:
        sample = torch.randn(BATCH, 4, size // 8, size // 8, generator=generator)  # (B, 4, h, w)
        cond = torch.rand(BATCH, 3, size, size, generator=generator)  # (B, 3, H, W)

        def forward():
            with torch.no_grad():
                controlnet(sample, 500, text, cond, return_dict=False)

        bank.set_attention("canny", False, engine.linfusion)
        softmax = median_time(forward, repeats)
        bank.set_attention("canny", True, engine.linfusion)
        linear = median_time(forward, repeats)
        rows.append((size, (size // 8) ** 2, softmax, linear))
        print(f"{size} px: softmax {fmt(softmax)}, linear {fmt(linear)}", flush=True)
    layers = controlnet_self_attention(controlnet)
    return rows, len(layers)


def report(rows, layers: int, threads: int, repeats: int, argv: list[str]) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "## ControlNet self-attention: softmax (upstream) vs LinFusion linear (CPU)",
        "",
        f"Command (from the repository root): `{shlex.join(['.venv/bin/python', 'bench/controlnet_bench.py', *argv])}`  ",
        f"Machine: {datetime.date.today()}, {platform.processor() or platform.machine()}, nproc {os.cpu_count()}, "
        f"torch {torch.__version__}, torch.set_num_threads({threads}), load average before the run {load:.2f}. "
        f"Median of {repeats} runs per cell.",
        "",
        f"One forward of the tiny SD-1.5 ControlNet (batch {BATCH}, fp32, {layers} self-attention layers, "
        "one control map): softmax = its own AttnProcessor2_0; linear = its own Q/K/V/out with the UNet's "
        "LinFusion MLPs (`ControlNetBank.set_attention`).",
        "",
        "| image | attn1 tokens (largest) | softmax | linear | softmax / linear |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, tokens, softmax, linear in rows:
        lines.append(f"| {size} px | {tokens:,} | {fmt(softmax)} | {fmt(linear)} | {softmax / linear:.1f}x |")
    lines += ["", "The gap grows with the token count as in the UNet: without linear attention in the "
                  "ControlNet, a large render with a control map keeps a quadratic term."]
    return "\n".join(lines)


def write(section: str) -> None:
    update_section("controlnet", section, DOC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, layers = run(args.repeats)
    argv = [a for a in sys.argv[1:] if a != "--no-write"]
    section = report(rows, layers, args.threads, args.repeats, argv)
    print(section)
    if not args.no_write:
        write(section)


if __name__ == "__main__":
    main()
