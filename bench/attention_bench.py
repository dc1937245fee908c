"""Attention benchmark: LinFusion's linear attention against PyTorch SDPA, on this machine's CPU.

Measures, side by side in one process:
1. one attention call (batch 2, 8 heads, 64 dims, fp32) at 1k/4k/16k tokens, and 64k for linear
   only (SDPA would take minutes);
2. a forward of the tiny SD-1.5-shaped UNet (`linfusion_devkit.tiny.tiny_unet_config("sd15")`,
   batch 2) at 256/512/1024 px with diffusers' default SDPA processor, with LinFusion mounted, and
   with the floor: attn1 replaced by a processor that returns zeros (attention that costs nothing).

Prints a Markdown report and writes it between the `<!-- bench:attention -->` markers of
docs/benchmarks.md (other sections of that file are left alone). Times are medians of a few
repeats with a fixed number of threads; this is a benchmark, not a test.

    .venv/bin/python bench/attention_bench.py [--threads N] [--repeats R] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a plain script from a checkout

from linfusion_engine.attention import generalized_linear_attention  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, also when loaded by path
from benchdocs import update_section  # noqa: E402
from timing import median_time  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
BATCH, HEADS, HEAD_DIM = 2, 8, 64
ATTENTION_TOKENS = (1024, 4096, 16384)
LINEAR_ONLY_TOKENS = (65536,)
UNET_SIZES = (256, 512, 1024)
TEXT_TOKENS = 77
# A call slower than this is its own warm-up: no extra untimed run.
TARGET_SPEEDUP, TARGET_FLOOR_RATIO = 15.0, 1.3



def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


# -- 1. one attention call ------------------------------------------------------------------------
def bench_attention(repeats: int) -> list[dict]:
    rows = []
    for tokens in ATTENTION_TOKENS + LINEAR_ONLY_TOKENS:
        gen = torch.Generator().manual_seed(tokens)
        q, k, v = (torch.randn(BATCH, HEADS, tokens, HEAD_DIM, generator=gen) for _ in range(3))  # (B, H, N, d)
        linear = median_time(lambda: generalized_linear_attention(q, k, v), repeats)
        sdpa = None
        if tokens in ATTENTION_TOKENS:
            sdpa = median_time(lambda: F.scaled_dot_product_attention(q, k, v), repeats)
        rows.append({"tokens": tokens, "linear": linear, "sdpa": sdpa})
        print(f"  attention {tokens:>6} tokens: linear {fmt_s(linear)}, SDPA {fmt_s(sdpa)}", flush=True)
    return rows


# -- 2. tiny UNet forward ---------------------------------------------------------------------------
class ZeroSelfAttention:
    """The floor: a self-attention that returns zeros of the right shape and costs nothing."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        return torch.zeros_like(hidden_states)


def bench_unet(repeats: int) -> tuple[list[dict], dict]:
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    from linfusion_engine.linfusion import LinFusion
    from linfusion_devkit.tiny import tiny_unet_config

    config = tiny_unet_config("sd15")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).eval()
    linfusion = LinFusion.from_unet(unet)
    names = list(unet.attn_processors)
    backends = {
        "sdpa": lambda: unet.set_attn_processor(AttnProcessor2_0()),
        "linfusion": lambda: linfusion.mount(unet),
        "floor": lambda: unet.set_attn_processor(
            {name: ZeroSelfAttention() if name.endswith("attn1.processor") else AttnProcessor2_0() for name in names}),
    }
    rows = []
    for size in UNET_SIZES:
        latent = size // 8
        gen = torch.Generator().manual_seed(size)
        sample = torch.randn(BATCH, config["in_channels"], latent, latent, generator=gen)  # (B, 4, h, w)
        text = torch.randn(BATCH, TEXT_TOKENS, config["cross_attention_dim"], generator=gen)  # (B, 77, C_text)
        timestep = torch.tensor([500] * BATCH)
        row = {"size": size, "tokens": latent * latent}
        for backend, install in backends.items():
            install()
            row[backend] = median_time(lambda: unet(sample, timestep, text), repeats)
            if backend == "linfusion":
                LinFusion.unmount(unet)
        rows.append(row)
        print(f"  UNet {size:>4} px: SDPA {fmt_s(row['sdpa'])}, LinFusion {fmt_s(row['linfusion'])}, "
              f"floor {fmt_s(row['floor'])}", flush=True)
    layers = [(entry["dim_n"], entry["heads"]) for entry in linfusion.config.modules_list]
    return rows, {"config": config, "layers": layers}


# -- report -------------------------------------------------------------------------------------------
def machine_line(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import diffusers

    return (f"{datetime.date.today().isoformat()}, {cpu}, nproc {len(os.sched_getaffinity(0))}, "
            f"torch {torch.__version__}, diffusers {diffusers.__version__}, torch.set_num_threads({threads}), "
            f"load average before the run {os.getloadavg()[0]:.2f}")


def command_line() -> str:
    """The command that produced the report, as one would type it from the repository root."""
    python = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    script = os.path.relpath(Path(__file__).resolve(), REPO)
    return " ".join([python, script] + [shlex.quote(arg) for arg in sys.argv[1:]])


def report(attention: list[dict], unet: list[dict], unet_info: dict, threads: int, repeats: int,
           machine: str) -> str:
    config = unet_info["config"]
    lines = [
        "## Attention: LinFusion linear attention vs SDPA (CPU)",
        "",
        f"Command (from the repository root): `{command_line()}`  ",
        f"Machine: {machine}. Median of {repeats} runs per cell.",
        "",
        f"### One attention call (batch {BATCH}, {HEADS} heads, {HEAD_DIM} dims, fp32)",
        "",
        "| tokens | linear (LinFusion) | SDPA | SDPA / linear |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for row in attention:
        ratio = f"{row['sdpa'] / row['linear']:.1f}x" if row["sdpa"] else "-"
        sdpa = fmt_s(row["sdpa"]) if row["sdpa"] else "not run (minutes)"
        lines.append(f"| {row['tokens']:,} | {fmt_s(row['linear'])} | {sdpa} | {ratio} |")
    lines += [
        "",
        f"### Tiny UNet forward (batch {BATCH}, fp32)",
        "",
        f"`tiny_unet_config(\"sd15\")`: block_out_channels {tuple(config['block_out_channels'])}, "
        f"layers_per_block {config['layers_per_block']}, {config['attention_head_dim']} heads, "
        f"{len(unet_info['layers'])} self-attention layers (channels, heads: {unet_info['layers']}), "
        f"{TEXT_TOKENS} text tokens. SDPA = diffusers' default AttnProcessor2_0; LinFusion = "
        "`LinFusion.from_unet(unet).mount(unet)`; floor = attn1 returns zeros (attention that costs nothing).",
        "",
        "| image | attn1 tokens (largest) | SDPA | LinFusion | floor | SDPA / LinFusion | LinFusion / floor |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in unet:
        lines.append(f"| {row['size']} px | {row['tokens']:,} | {fmt_s(row['sdpa'])} | {fmt_s(row['linfusion'])} | "
                     f"{fmt_s(row['floor'])} | {row['sdpa'] / row['linfusion']:.1f}x | "
                     f"{row['linfusion'] / row['floor']:.2f}x |")
    top = unet[-1]
    speedup, floor_ratio = top["sdpa"] / top["linfusion"], top["linfusion"] / top["floor"]
    lines += [
        "",
        f"Targets at {top['size']} px: LinFusion at least {TARGET_SPEEDUP:g}x faster than SDPA -- "
        f"{speedup:.1f}x, {'met' if speedup >= TARGET_SPEEDUP else 'MISSED'}; within {TARGET_FLOOR_RATIO:g}x "
        f"of the floor -- {floor_ratio:.2f}x, {'met' if floor_ratio <= TARGET_FLOOR_RATIO else 'MISSED'}.",
        "",
        "Notes. One thread by default: on a 2-core machine shared with other processes, two threads made "
        "every small op wait for a descheduled OpenMP thread (~10 ms each; linear attention over 256 tokens "
        "took 100 ms instead of 4 ms). What separates LinFusion from the floor is the layer's own work at "
        "16k tokens: two MLPs (Linear, LayerNorm, LeakyReLU, Linear), four projections, ELU on q and k, "
        "and two batched matmuls whose 8-wide heads use BLAS poorly (real SD heads are 40-160 wide). The "
        "attention core already makes one fp32 contiguous copy per q/k/v chunk, gets both statistics "
        "(kv and the key mean) from one matmul, and writes its output in the projections' token-major "
        "layout so the processor reshapes it without a copy.",
    ]
    return "\n".join(lines)


def write_section(section: str, doc: Path = DOC) -> None:
    """Replace (or append) this benchmark's section of docs/benchmarks.md, keeping the others."""
    update_section("attention", section, doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: on a CPU shared with other processes, every "
                             "parallel op waits for a descheduled OpenMP thread and small ops cost ~10 ms)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell; the median is reported")
    parser.add_argument("--no-write", action="store_true", help=f"print only, leave {DOC.relative_to(REPO)} alone")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    machine = machine_line(args.threads)
    print(f"threads: {torch.get_num_threads()}; {machine}", flush=True)
    with torch.inference_mode():
        attention = bench_attention(args.repeats)
        unet, unet_info = bench_unet(args.repeats)
    section = report(attention, unet, unet_info, args.threads, args.repeats, machine)
    print()
    print(section)
    if not args.no_write:
        write_section(section)
        print(f"\nwritten to {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
