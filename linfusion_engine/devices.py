"""Which device and dtype a render runs on.

Default: the first CUDA GPU in bf16 (fp16 where the GPU has no bf16), else the CPU in fp32 — CPU
half precision is slow and, for LinFusion-2-1, unstable. bf16 rather than fp16 on GPUs because
the LinFusion-2-1 weights are known to overflow in fp16. Callers override with explicit values
(the studio passes `settings.device` / `settings.dtype`); a request for a device that is not
there fails here, with a sentence, instead of deep inside torch.
"""

from __future__ import annotations

import torch

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as a torch.device, checked to exist; None picks CUDA when present, else the CPU."""
    if device is None or device == "":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r}: not a torch device name (cpu, cuda, cuda:1, mps)") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is visible to torch on this machine")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: only cpu, cuda and mps are supported")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`dtype` as a torch floating dtype; None picks bf16 on CUDA (fp16 if unsupported), fp16 on
    MPS, fp32 on the CPU."""
    if dtype is None or dtype == "":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPE_NAMES.values():
            raise ValueError(f"dtype {dtype}: use float32, bfloat16 or float16")
        return dtype
    try:
        return _DTYPE_NAMES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"dtype {dtype!r}: use float32, bfloat16 or float16") from None


def dtype_name(dtype: torch.dtype) -> str:
    """'bfloat16' for torch.bfloat16: the spelling metadata and settings use."""
    return str(dtype).removeprefix("torch.")
