"""One loaded engine per model per process, so a flow run loads each model once.

Loading a pipeline costs seconds on a CPU and far more for real weights on a GPU; a batch renders
many jobs with the same model. The cache lives for the process (a Prefect flow run, or a GPU
worker's long-lived render host), and a lock per model keeps two task threads from loading it
twice or from rendering on one pipeline at the same time (diffusers pipelines are not thread-safe).
A long-lived process bounds what it keeps with `keep_at_most`: least recently used models go first,
so a host that rendered SD-XL last night does not hold it on the GPU forever beside today's models.

The model registry is handed in by whoever renders (the run's `RunContext.registry`, the render
host's own, built once at its start): this module reads no settings. Engines are cached by model
name, as a process renders with one registry; an engine keeps the registry it was loaded with.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator

from linfusion_engine import Engine

_lock = threading.Lock()
_engines: OrderedDict[tuple[str, str | None, str | None], object] = OrderedDict()  # least recently used first
_model_locks: dict[tuple[str, str | None, str | None], threading.Lock] = {}


@contextmanager
def engine_for(model: str, registry, device: str | None = None, dtype: str | None = None) -> Iterator[object]:
    """Yield the process's engine for `model`, loading it from `registry` (a
    `linfusion_engine.registry.ModelRegistry`) on first use; holds the model's lock."""
    key = (model, device, dtype)
    with _lock:
        model_lock = _model_locks.setdefault(key, threading.Lock())
    with model_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = Engine(model, registry=registry, device=device, dtype=dtype)
            engine.load()
        with _lock:
            _engines[key] = engine
            _engines.move_to_end(key)
        yield engine


def loaded_models() -> list[str]:
    """Names of the models loaded in this process (for tests and logs)."""
    return sorted({key[0] for key in _engines})


def loaded_engines() -> list[object]:
    """The engines loaded in this process."""
    return list(_engines.values())


def close_all() -> None:
    """Free every loaded engine (end of a flow run in a long-lived process)."""
    with _lock:
        for engine in _engines.values():
            engine.close()
        _engines.clear()


def keep_at_most(count: int) -> list[str]:
    """Close least recently used engines until `count` remain; returns the models closed.

    An engine in use (its model lock held) is skipped, so eviction never pulls a pipeline out from
    under a render.
    """
    closed = []
    with _lock:
        for key in list(_engines):
            if len(_engines) <= count:
                break
            model_lock = _model_locks[key]
            if not model_lock.acquire(blocking=False):
                continue
            try:
                _engines.pop(key).close()
                closed.append(key[0])
            finally:
                model_lock.release()
    return closed
