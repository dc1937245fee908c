"""One denoising step of the full-size SD-1.5 UNet: LinFusion vs SDPA vs an attention-free floor.

Why: attention_bench.py times a tiny UNet (32/64 channels, 4 heads) whose self-attention is most
of the work; in the real SD-1.5 UNet (320/640/1280 channels, 8 heads of 40/80/160, 860 M
parameters) convolutions and feed-forwards take their share too. This script measures what a
user sees per step on the real architecture: one UNet forward at batch 2 (classifier-free
guidance), text context (2, 77, 768), at each `--sizes` (latents /8), for each arm:

1. `linfusion`: `LinFusion.from_unet(unet).mount(unet)` (generalized linear attention in attn1);
2. `sdpa`: diffusers' default processors (PyTorch scaled_dot_product_attention);
3. `floor`: attn1 replaced by attention_bench's ZeroSelfAttention (returns zeros: attention that
   costs nothing), cross-attention kept.

The UNet comes from linfusion_engine/configs/sd15/unet/config.json with random weights (speed and
memory do not depend on their values): built on the meta device, then `to_empty` and a seeded
normal fill scaled by fan-in, norms at 1, biases at 0, so activations stay in range (no
denormals on the CPU, no overflow in bf16). Every (arm, size) cell runs in its own fresh
subprocess, so its peak memory is its own: on the CPU the child's ru_maxrss, with the RSS after
building (model + imports) and the difference (the forward's activations); on CUDA
torch.cuda.max_memory_allocated and memory_allocated after building. Within a child: one warm-up
forward, then the median of `--repeats` timed forwards under torch.inference_mode (with
torch.cuda.synchronize around each on CUDA). Arms at one size run back to back and sizes in
order, so the ratios compare neighbours on a noisy shared machine. There, `--threads 1` was the
steadier choice: with both threads of a busy 2-core machine, one cell's forwards ranged from 2.7 s
to 12.4 s (OpenMP threads waiting for a descheduled sibling); with one, within 10% at 256-512 px.

Prints a Markdown report and writes it between the `<!-- bench:real-arch -->` markers of
docs/benchmarks.md (other sections are left alone). A benchmark, not a test.

    .venv/bin/python bench/real_arch_bench.py [--sizes 256 512 768] [--arms linfusion sdpa floor]
        [--repeats 3] [--threads N] [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a plain script from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, also when loaded by path
from benchdocs import update_section  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
SECTION = "real-arch"
UNET_CONFIG = REPO / "linfusion_engine" / "configs" / "sd15" / "unet" / "config.json"
BATCH, TEXT_TOKENS = 2, 77
TIMESTEP = 500
ARMS = ("linfusion", "sdpa", "floor")
SIZES = (256, 512, 768)
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
RESULT_PREFIX = "RESULT "  # the child's one line of JSON on stdout
MIB = 1024 ** 2
NOISY_SPREAD = 1.5  # slowest / fastest timed forward of one cell above this: the report says the run was noisy


# -- the child: one (arm, size) cell ----------------------------------------------------------------
def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def build_unet(device, dtype, seed: int = 0):
    """The full-size SD-1.5 UNet on `device` in `dtype`, random weights, without default init."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch import nn

    config = UNet2DConditionModel.load_config(str(UNET_CONFIG.parent))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    unet = unet.to_empty(device=device).to(dtype=dtype).eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    norms = (nn.GroupNorm, nn.LayerNorm)
    with torch.no_grad():
        for module in unet.modules():
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, norms) and name == "weight":
                    param.fill_(1.0)
                elif param.dim() >= 2:  # Linear (out, in), Conv2d (out, in, kh, kw): std 1/sqrt(fan_in)
                    param.normal_(0.0, param[0].numel() ** -0.5, generator=generator)
                else:
                    param.zero_()
            for buffer in module.buffers(recurse=False):
                buffer.zero_()
    return unet


def install_arm(unet, arm: str) -> str:
    """Set the arm's attention on `unet`; returns a short description of the attn1 processor."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    if arm == "linfusion":
        from linfusion_engine.linfusion import LinFusion

        LinFusion.from_unet(unet).mount(unet)
    elif arm == "floor":
        from attention_bench import ZeroSelfAttention

        unet.set_attn_processor({name: ZeroSelfAttention() if name.endswith("attn1.processor") else AttnProcessor2_0()
                                 for name in unet.attn_processors})
    elif arm != "sdpa":  # sdpa: the processors diffusers set at construction
        raise ValueError(f"unknown arm {arm!r}; expected one of {', '.join(ARMS)}")
    processors = unet.attn_processors
    attn1 = sorted({type(p).__name__ for name, p in processors.items() if name.endswith("attn1.processor")})
    attn2 = sorted({type(p).__name__ for name, p in processors.items() if name.endswith("attn2.processor")})
    return f"attn1 {'/'.join(attn1)}, attn2 {'/'.join(attn2)}"


def run_cell(arm: str, size: int, device_name: str, dtype_name: str, threads: int, repeats: int) -> dict:
    import resource

    import diffusers
    import torch

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    dtype = getattr(torch, DTYPES[dtype_name])
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    started = time.perf_counter()
    unet = build_unet(device, dtype)
    processors = install_arm(unet, arm)
    params = sum(p.numel() for p in unet.parameters())
    sync()
    build_s = time.perf_counter() - started
    model_bytes = torch.cuda.memory_allocated(device) if cuda else rss_bytes()

    latent = size // 8
    generator = torch.Generator(device=device).manual_seed(size)
    sample = torch.randn(BATCH, unet.config.in_channels, latent, latent, generator=generator,
                         device=device, dtype=dtype)  # (2, 4, h, w): uncond + cond latents
    text = torch.randn(BATCH, TEXT_TOKENS, unet.config.cross_attention_dim, generator=generator,
                       device=device, dtype=dtype)  # (2, 77, 768)
    timestep = torch.tensor(TIMESTEP, device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    times = []
    with torch.inference_mode():
        for index in range(repeats + 1):  # index 0: the warm-up
            sync()
            start = time.perf_counter()
            out = unet(sample, timestep, text, return_dict=False)[0]  # (2, 4, h, w)
            sync()
            if index:
                times.append(time.perf_counter() - start)
            assert out.shape == sample.shape, out.shape
            finite = bool(torch.isfinite(out).all())
            del out
    if cuda:
        peak_bytes = torch.cuda.max_memory_allocated(device)
    else:
        peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {
        "arm": arm, "size": size, "tokens": latent * latent, "median_s": statistics.median(times),
        "times_s": times, "build_s": build_s, "model_bytes": model_bytes, "peak_bytes": peak_bytes,
        "finite": finite, "params": params, "processors": processors, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_model(),
    }


# -- the parent: one subprocess per cell --------------------------------------------------------------
def measure(arm: str, size: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", arm, str(size), "--device", args.device,
               "--dtype", args.dtype, "--threads", str(args.threads), "--repeats", str(args.repeats)]
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return {**json.loads(line[len(RESULT_PREFIX):]), "wall_s": wall}
    last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return {"arm": arm, "size": size, "tokens": (size // 8) ** 2, "error": f"exit {done.returncode}: {last}",
            "wall_s": wall}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_line() -> str:
    """The command that produced the report, as one would type it from the repository root."""
    python = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    script = os.path.relpath(Path(__file__).resolve(), REPO)
    return " ".join([python, script] + [shlex.quote(arg) for arg in sys.argv[1:]])


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def report(rows: list[dict], args: argparse.Namespace, load: float, total_s: float) -> str:
    cuda = args.device == "cuda"
    ok = [row for row in rows if "error" not in row]
    first = ok[0] if ok else {}
    params = {row["arm"]: row["params"] for row in ok}
    base = params.get("sdpa", params.get("floor"))
    counted = f"{base / 1e6:.0f} M parameters" if base else "?"
    if base and "linfusion" in params:
        counted += f"; LinFusion's mounted layers add {(params['linfusion'] - base) / 1e6:.0f} M"
    memory = "torch.cuda.max_memory_allocated" if cuda else "the child's ru_maxrss"
    model = "memory_allocated after building" if cuda else "RSS after building (model + imports)"
    lines = [
        f"## Full-size SD-1.5 UNet: one denoising step, LinFusion vs SDPA vs floor ({args.device.upper()})",
        "",
        f"Command (from the repository root): `{command_line()}`  ",
        f"Machine: {datetime.date.today().isoformat()}, {first.get('device_name', '?')}"
        + (f" (host CPU {cpu_model()})" if cuda else "")
        + f", nproc {len(os.sched_getaffinity(0))}, torch {first.get('torch', '?')}, "
        f"diffusers {first.get('diffusers', '?')}, {args.dtype}, torch.set_num_threads({args.threads}), "
        f"load average before the run {load:.2f}. Whole run {total_s:.0f} s.",
        "",
        f"One UNet forward = one step with classifier-free guidance: batch {BATCH}, text context "
        f"({BATCH}, {TEXT_TOKENS}, 768), timestep {TIMESTEP}, `linfusion_engine/configs/sd15/unet/config.json` "
        f"({counted}; random weights). "
        f"Each cell in a fresh subprocess: one warm-up forward, then the median of {args.repeats} under "
        "torch.inference_mode. Arms: linfusion = `LinFusion.from_unet(unet).mount(unet)`; sdpa = diffusers' "
        "default processors (AttnProcessor2_0); floor = attn1 returns zeros (attention that costs nothing), "
        "attn2 kept. fastest = the quickest timed forward; vs sdpa = arm / sdpa (medians); attention share = "
        "(arm - floor) / (sdpa - floor) of the medians: what the arm's self-attention costs as a fraction of "
        f"SDPA's (sdpa 100%, floor 0%). Peak = {memory}; "
        f"activation = peak - {model}.",
        "",
        "| image | tokens (top level) | arm | median | fastest | vs sdpa | attention share | peak MiB "
        "| activation MiB |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_cell = {(row["size"], row["arm"]): row for row in ok}
    shares = []
    for row in rows:
        size, arm = row["size"], row["arm"]
        head = f"| {size} px | {row['tokens']:,} | {arm} |"
        if "error" in row:
            lines.append(f"{head} failed: {row['error']} | - | - | - | - | - |")
            continue
        sdpa, floor = by_cell.get((size, "sdpa")), by_cell.get((size, "floor"))
        ratio = f"{row['median_s'] / sdpa['median_s']:.2f}x" if sdpa else "-"
        share = "-"
        if sdpa and floor and sdpa["median_s"] > floor["median_s"]:
            share = f"{(row['median_s'] - floor['median_s']) / (sdpa['median_s'] - floor['median_s']):.0%}"
        flag = "" if row["finite"] else " (non-finite output)"
        lines.append(f"{head} {fmt_s(row['median_s'])}{flag} | {fmt_s(min(row['times_s']))} | {ratio} | {share} | "
                     f"{row['peak_bytes'] / MIB:,.0f} | {(row['peak_bytes'] - row['model_bytes']) / MIB:,.0f} |")
        if arm == "sdpa" and floor:
            shares.append(f"{size} px {(row['median_s'] - floor['median_s']) / row['median_s']:.0%}")
    if shares:
        lines += ["", "SDPA self-attention's share of its own step, (sdpa - floor) / sdpa: " + ", ".join(shares) + "."]
    timings = "; ".join(f"{row['size']} {row['arm']} " + "/".join(f"{t:.2f}" for t in row["times_s"])
                        for row in ok)
    lines += ["", f"Every timed forward (s): {timings}."]
    spread = max((max(row["times_s"]) / min(row["times_s"]), row) for row in ok) if ok else None
    if spread and spread[0] > NOISY_SPREAD:
        lines += ["", f"**Noisy run**: the timed forwards of one cell differ by up to {spread[0]:.1f}x "
                  f"({spread[1]['size']} px {spread[1]['arm']}), so the ratios above are not trustworthy; "
                  "other processes were competing for the cores. Re-run on a quiet machine, or with more "
                  "`--repeats`, or `--threads 1`."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES),
                        help="image sizes in px, square, multiples of 64 (default: 256 512 768)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="arms, run in this order per size")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per cell after one warm-up; the median")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch.set_num_threads in each child (default: all cores)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--no-write", action="store_true", help=f"print only, leave {DOC.relative_to(REPO)} alone")
    parser.add_argument("--child", nargs=2, metavar=("ARM", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if bad := [size for size in args.sizes if size < 64 or size % 64]:
        parser.error(f"--sizes must be multiples of 64 (the UNet downsamples the latent 3 times): {bad}")

    if args.child:
        arm, size = args.child
        result = run_cell(arm, int(size), args.device, args.dtype, args.threads, args.repeats)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return

    load = os.getloadavg()[0]
    started = time.perf_counter()
    rows = []
    for size in args.sizes:
        for arm in args.arms:
            row = measure(arm, size, args)
            rows.append(row)
            if "error" in row:
                print(f"  {size:>4} px {arm:<9} FAILED {row['error']}", flush=True)
            else:
                print(f"  {size:>4} px {arm:<9} {fmt_s(row['median_s']):>9}  peak {row['peak_bytes'] / MIB:,.0f} MiB, "
                      f"model {row['model_bytes'] / MIB:,.0f} MiB, build {row['build_s']:.1f} s, "
                      f"cell {row['wall_s']:.0f} s ({row['processors']})", flush=True)
    total_s = time.perf_counter() - started
    section = report(rows, args, load, total_s)
    print()
    print(section)
    if not args.no_write:
        update_section(SECTION, section, DOC)
        print(f"\nwritten to {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
