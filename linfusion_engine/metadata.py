"""What a render records about the software and hardware that made it.

A render's metadata must let someone tell, months later, why two images of the same job differ:
library versions, device and peak memory are collected here so the engine's render method only
assembles them.
"""

from __future__ import annotations

import functools
import platform
import resource
import sys
from importlib import metadata as importlib_metadata

_LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "safetensors")


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Installed versions of Python and the libraries that decide a render's pixels."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_description(device) -> str:
    """A human name for the device: the GPU model on CUDA, the CPU architecture otherwise."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU" if device.type == "cpu" else device.type


def process_peak_rss_bytes() -> int:
    """The process's peak resident memory so far (lifetime, not per render): ru_maxrss.

    Linux reports KiB and macOS bytes.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class PeakMemory:
    """Peak accelerator memory of the code inside `with PeakMemory(device) as meter:`.

    On CUDA this is `torch.cuda.max_memory_allocated` after resetting the peak at entry: tensors
    only, not the allocator's cache or the CUDA context. On the CPU there is no per-call peak
    (ru_maxrss is a lifetime maximum, and a delta of it reads 0 whenever an earlier render peaked
    higher), so `bytes` stays None there and callers record the lifetime RSS separately.
    """

    def __init__(self, device) -> None:
        self.device = device
        self.bytes: int | None = None
        self.source: str | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            self.bytes = int(torch.cuda.max_memory_allocated(self.device))
            self.source = "torch.cuda.max_memory_allocated"
