"""Will a render fit the device, and the low-memory mode that makes it fit when it would not.

The engine asks `planner.estimate` for a render's peak and compares it with `device_budget_bytes`;
when `RenderRequest.low_memory` is None (auto) and the estimate does not fit, it renders inside
`low_memory_mode`, which trades time for memory the way the published 16K-on-24-GB recipe does:

1. classifier-free guidance one sample at a time (the UNet sees batch 1, twice);
2. every transformer block's feed-forward split into `FF_CHUNKS` token chunks (its 4x-wide hidden
   layer is the largest activation of a block);
3. the UNet's skip tensors parked on the host between the down and the up path (GPU only; a
   ControlNet's residuals switch it off for that call, since they are added on the device);
4. the allocator cache emptied after every UNet call (GPU only).

Nothing here changes the maths: a low-memory render matches a normal one up to float rounding.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import torch
from torch import nn

FF_CHUNKS = 16
BUDGET_FRACTION = 0.9  # leave room for the CUDA context, fragmentation, other processes


def device_budget_bytes(device: torch.device) -> int | None:
    """Memory a render may use on `device`: 90% of the GPU's total, or of the host's available
    memory plus what this process already holds (the loaded weights); None if unknown."""
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        return int(total * BUDGET_FRACTION)
    try:
        with open("/proc/meminfo") as handle:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in handle}
        return int((info["MemAvailable"] + current_rss_bytes()) * BUDGET_FRACTION)
    except (OSError, KeyError, ValueError):
        return None


def current_rss_bytes() -> int:
    """This process's resident memory now (Linux /proc/self/statm; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class RssPeak:
    """Peak resident memory above the starting level while the block runs (CPU renders).

    `ru_maxrss` is a lifetime maximum and cannot measure one render, so a thread samples
    /proc/self/statm every `interval` seconds; short spikes between samples are missed, which makes
    this a lower bound.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def bytes(self) -> int:
        return max(0, self.peak - self.start)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "RssPeak":
        self.start = self.peak = current_rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes())


def _slice_batch(value, index: int, batch: int):
    """Sample `index` of a batched argument (tensors with a leading batch dim, dicts, lists of them)."""
    if torch.is_tensor(value):
        return value[index:index + 1] if value.ndim and value.shape[0] == batch else value
    if isinstance(value, dict):
        return {k: _slice_batch(v, index, batch) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_slice_batch(v, index, batch) for v in value)
    return value


def _one_sample_at_a_time(plain_forward):
    """A UNet forward that runs a batch one sample at a time and concatenates the predictions."""
    def forward(sample, timestep, encoder_hidden_states, *args, **kwargs):
        batch = sample.shape[0]
        if batch == 1:
            return plain_forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        outputs = [plain_forward(sample[i:i + 1], _slice_batch(timestep, i, batch),
                                 encoder_hidden_states[i:i + 1], *_slice_batch(args, i, batch),
                                 **_slice_batch(kwargs, i, batch)) for i in range(batch)]
        first = outputs[0]
        if isinstance(first, tuple):
            return (torch.cat([o[0] for o in outputs]),)  # (B, 4, h, w)
        first.sample = torch.cat([o.sample for o in outputs])  # (B, 4, h, w)
        return first

    return forward


def _chunked(plain_forward, chunks: int):
    """A feed-forward that runs its (B, N, C) input in `chunks` token chunks."""
    def forward(hidden_states, *args, **kwargs):
        if hidden_states.ndim != 3 or hidden_states.shape[1] < chunks:
            return plain_forward(hidden_states, *args, **kwargs)
        return torch.cat([plain_forward(part, *args, **kwargs)
                          for part in hidden_states.chunk(chunks, dim=1)], dim=1)  # (B, N, C)

    return forward


@contextlib.contextmanager
def low_memory_mode(unet: nn.Module, device: torch.device, ff_chunks: int = FF_CHUNKS):
    """The four measures of the module docstring on `unet`, undone on exit."""
    from diffusers.models.attention import BasicTransformerBlock

    restore: list[tuple[nn.Module, object]] = []
    handles = []

    def patch(module: nn.Module, new_forward) -> None:
        restore.append((module, module.__dict__.get("forward")))
        module.forward = new_forward

    patch(unet, _one_sample_at_a_time(unet.forward))
    for block in unet.modules():
        if isinstance(block, BasicTransformerBlock):
            patch(block.ff, _chunked(block.ff.forward, ff_chunks))
    if device.type == "cuda":
        handles.extend(_park_skips_on_host(unet, device))
        handles.append(unet.register_forward_hook(lambda *_: torch.cuda.empty_cache()))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, previous in reversed(restore):
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def _park_skips_on_host(unet: nn.Module, device: torch.device) -> list:
    """Hooks moving each down block's skip tensors to pinned host memory and back for the up block."""
    state = {"park": True}

    def before_unet(module, args, kwargs):
        state["park"] = kwargs.get("down_block_additional_residuals") is None

    def after_down(module, args, output):
        if not state["park"] or not isinstance(output, tuple) or len(output) != 2:
            return output
        hidden, skips = output
        return hidden, tuple(s.to("cpu", non_blocking=True) for s in skips)

    def before_up(module, args, kwargs):
        skips = kwargs.get("res_hidden_states_tuple")
        if skips is not None:
            kwargs["res_hidden_states_tuple"] = tuple(s.to(device, non_blocking=True) for s in skips)
        return args, kwargs

    handles = [unet.register_forward_pre_hook(before_unet, with_kwargs=True)]
    handles += [block.register_forward_hook(after_down) for block in unet.down_blocks]
    handles += [block.register_forward_pre_hook(before_up, with_kwargs=True) for block in unet.up_blocks]
    return handles
