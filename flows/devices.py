"""Render slots: one per GPU (or one on a CPU), handed out to task threads.

A slot is a device name. A task takes a free slot for the length of one render, so at most one
render runs per GPU at a time and the engine for that device is reused by the next job.
"""

from __future__ import annotations

import queue
from contextlib import contextmanager
from typing import Iterator


def render_devices(configured: str | None) -> list[str | None]:
    """The devices to render on: the configured one, else every CUDA GPU, else the CPU (None = auto)."""
    if configured:
        return [configured]
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # torch missing or broken CUDA: render on the CPU
        count = 0
    return [f"cuda:{i}" for i in range(count)] or [None]


class SlotPool:
    """A blocking pool of render devices; `with pool.slot() as device:` holds one."""

    def __init__(self, devices: list[str | None]) -> None:
        self.size = len(devices)
        self._free: queue.Queue = queue.Queue()
        for device in devices:
            self._free.put(device)

    @contextmanager
    def slot(self) -> Iterator[str | None]:
        device = self._free.get()
        try:
            yield device
        finally:
            self._free.put(device)
