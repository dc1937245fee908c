"""The Engine: one loaded base pipeline with LinFusion mounted, rendering one request at a time.

Loading a real model costs seconds to minutes, so an Engine loads its pipeline once (lazily on the
first render, or with `load()`) and keeps it; everything a request may vary — size, seed, steps,
guidance, scheduler and the attention backend — is switched per render without reloading.

Attention backends. LinFusion's linear attention wins above the base model's native size, where
softmax attention's cost grows with the square of the token count; at and below it linear
attention is reported slower and no better (A100 at 512 px; SD-XL at 1-2K), so
`attention="auto"` picks softmax there. The LinFusion layers stay loaded; switching swaps the
self-attention processors only (`LinFusion.unmount` / `lf.mount`), which touches no weights.

Nothing is downloaded here: a model whose files are not on this machine fails with
`ModelNotAvailableError` before any load is attempted, with a message saying how to provide it,
and the loads themselves run with the Hugging Face hub switched offline.

This module imports torch only inside methods. The request types (`RenderRequest`, its
`check_inputs`, `choose_attention`) live in `linfusion_engine.requests`, torch-free, so manifest
validation and the strategies use them without the engine.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

from linfusion_engine import __version__
from linfusion_engine.builtins import ensure_built
from linfusion_engine.capabilities import ATTENTION_MODES
from linfusion_engine.loading import hub_offline, load_base_pipeline
from linfusion_engine.metadata import PeakMemory, device_description, library_versions, process_peak_rss_bytes
from linfusion_engine.registry import (
    ModelNotAvailableError,
    ModelRegistry,
)
# The request types live below the engine (the strategies need them too); found here as before.
from linfusion_engine.requests import RenderRequest, RenderResult, choose_attention
from linfusion_engine.schedulers import SCHEDULER_NAMES, make_scheduler
from linfusion_engine.tokenizers import clean_prompt, prompt_truncation

class Engine:
    """A base model with LinFusion, loaded once, rendering `RenderRequest`s.

    Args:
        model: a registry name (`tiny-sd15`, `sd15`, a studio's own entry).
        registry: where names are looked up (the studio's: `ModelRegistry.from_settings(settings)`).
        device: torch device name; None picks CUDA when present, else the CPU.
        dtype: float32, bfloat16 or float16; None picks bf16 on CUDA, fp32 on the CPU.

    Raises UnknownModelError at once for a name the registry does not know. Renders on one engine
    run one at a time (a lock): the scheduler and the attention processors are per-render state
    of the one shared pipeline. Use one engine per device for parallelism.
    """

    def __init__(self, model: str = "tiny-sd15", *, registry: ModelRegistry, device=None, dtype=None) -> None:
        # lazy: devices, linfusion, the conditioning session and the strategies import torch; this module
        # imports none (tests/engine/test_registry.py::test_registry_and_scheduler_names_import_without_torch)
        from linfusion_engine.devices import resolve_device, resolve_dtype

        self.registry = registry
        self.entry = self.registry.get(model)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.pipeline = None
        self.linfusion = None
        self.load_count = 0  # how many times a pipeline was loaded: tests check switching never reloads
        self.load_seconds: float | None = None
        self._identity: str | None = None
        self._weights: dict[str, str] = {}
        self._scheduler_config: dict[str, Any] = {}
        self._lock = threading.RLock()

    # -- loading ------------------------------------------------------------------------------
    @property
    def is_loaded(self) -> bool:
        return self.pipeline is not None

    def load(self) -> None:
        """Load the base pipeline and LinFusion once; later calls return at once."""
        with self._lock:
            if self.pipeline is not None:
                return
            started = time.perf_counter()
            entry = self.entry
            # Before touching any file: every part local, or a message saying how to provide it.
            self.registry.require_available(entry)
            base = self.registry.base_path(entry)
            if entry.is_tiny:
                ensure_built(entry.base, base, self.registry.models_dir)
            self._identity = self.registry.identity(entry)
            self._weights = self.registry.weight_digests(entry)

            pipe = load_base_pipeline(self.registry, entry, dtype=self.dtype)
            pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            self.linfusion = self._load_linfusion(pipe.unet)
            self._scheduler_config = dict(pipe.scheduler.config)
            self.pipeline = pipe
            self.load_count += 1
            self.load_seconds = time.perf_counter() - started

    def _load_linfusion(self, unet):
        """The entry's LinFusion layers, mounted on `unet` (already on the render device); None for `none`.

        `from_unet` builds them on the UNet's device and dtype; published weights load straight
        into the render dtype and device (they are stored in fp16).
        """
        from linfusion_engine.linfusion import LinFusion  # lazy: torch and diffusers (see Engine.__init__)

        source = self.entry.linfusion
        if source == "none":
            return None
        if source == "from_unet":
            linfusion = LinFusion.from_unet(unet)
        else:
            with hub_offline():
                linfusion = LinFusion.from_pretrained(
                    self.registry.linfusion_path(self.entry), torch_dtype=self.dtype, device=self.device)
        linfusion.mount(unet)
        return linfusion

    def conditioning_state(self):
        """The ControlNets and IP-Adapter this engine has loaded (issue 6; `linfusion_engine.conditioning`)."""
        if getattr(self, "_conditioning", None) is None:
            # lazy: the session's loaders import torch and diffusers (see Engine.__init__)
            from linfusion_engine.conditioning.session import EngineConditioning

            self._conditioning = EngineConditioning(self.registry, self.entry, device=self.device, dtype=self.dtype)
        return self._conditioning

    def close(self) -> None:
        """Drop the pipeline and LinFusion and return their memory (the CUDA cache included).

        The engine stays usable: the next render loads again.
        """
        with self._lock:
            self.pipeline = None
            self.linfusion = None
            self._conditioning = None  # issue 6: its ControlNets and IP-Adapter go with the pipeline
            gc.collect()
            if self.device.type == "cuda":
                import torch

                torch.cuda.empty_cache()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- attention switching ----------------------------------------------------------------
    @property
    def attention_backend(self) -> str | None:
        """What the UNet's self-attention runs now: `linear`, `softmax`, or None before loading."""
        if self.pipeline is None:
            return None
        from linfusion_engine.linfusion import is_mounted  # lazy: torch and diffusers (see Engine.__init__)

        return "linear" if is_mounted(self.pipeline.unet) else "softmax"

    def _use_attention(self, backend: str) -> None:
        """Swap the self-attention processors; no weights move and nothing reloads."""
        if self.attention_backend == backend:
            return
        from linfusion_engine.linfusion import LinFusion  # lazy: torch and diffusers (see Engine.__init__)

        if backend == "linear":
            self.linfusion.mount(self.pipeline.unet)
        else:
            LinFusion.unmount(self.pipeline.unet)

    def _prompt_truncation(self, request: RenderRequest) -> dict:
        """{prompt / negative_prompt: what CLIP's 77-token window cut off}; {} when both fit.

        diffusers truncates silently; artists want to know that the end of a long prompt was not
        seen by the model (see `linfusion_engine.tokenizers.prompt_truncation`).
        """
        cut = {field: prompt_truncation(self.pipeline.tokenizer, clean_prompt(getattr(request, field)))
               for field in ("prompt", "negative_prompt")}
        return {field: report for field, report in cut.items() if report is not None}

    # -- rendering ---------------------------------------------------------------------------
    def render(self, request: RenderRequest) -> RenderResult:
        """Render one request; see RenderResult. Metadata keys:

        engine_version, versions {python, torch, diffusers, transformers, accelerate, safetensors},
        device, device_name, dtype, attention (backend used), attention_requested, model, family,
        model_identity, base, base_format (builtin, single file, folder, hub), linfusion,
        weights {file: sha256} (empty for tiny models), prompt, negative_prompt, prompt_truncated
        ({prompt / negative_prompt: {tokens, kept, dropped_text}} for those CLIP cut at 77 tokens;
        {} when both fit), seed, width, height, steps, guidance, scheduler,
        timings {load_s (loading done by this call, 0.0 once loaded), render_s, total_s},
        peak_memory_bytes (CUDA: torch.cuda.max_memory_allocated during the render; None on the
        CPU), peak_memory_source, process_peak_rss_bytes (lifetime ru_maxrss of the process),
        conditioning (issue 6: each control map, reference, init image and mask with its pixel
        sha256, size and settings, the LoRAs, and per stage what it got; {} for none — see
        `linfusion_engine.conditioning.session.RenderSession.metadata`),
        strategy, strategy_requested, strategy_note, stages [{kind, width, height, strength,
        scheduler_steps, attention, seconds, dilation}], tileable, tiling {wrap_axes,
        vae_tiled_sizes, vae_tile_px, vae_overlap_px}, low_memory, low_memory_requested,
        memory {estimate_bytes, estimate_seconds, budget_bytes, measured_rss_bytes} (issue 5: see
        `linfusion_engine.strategies.render`; on the CPU memory.measured_rss_bytes is the sampled
        RSS above the level before the render, a lower bound).
        """
        import torch

        from linfusion_engine.devices import dtype_name  # lazy: torch (see Engine.__init__)

        started = time.perf_counter()
        # 1. Check inputs (before any load: a bad request costs nothing)
        request.check_inputs()
        width = request.width or self.entry.native_size
        height = request.height or self.entry.native_size
        backend = choose_attention(request, width, height, self.entry)

        with self._lock:
            # 2. Load the model (first render only)
            loads_before = self.load_count
            self.load()
            load_s = self.load_seconds if self.load_count != loads_before else 0.0

            # 3. Set the self-attention backend for this request
            self._use_attention(backend)

            # 4. Scheduler and seeded generator: fresh per render, so no state leaks between them
            pipe = self.pipeline
            pipe.scheduler = make_scheduler(request.scheduler, self._scheduler_config)
            generator = torch.Generator(device=self.device).manual_seed(request.seed)

            # 5. Run the strategy's stages (issue 5: linfusion_engine.strategies) and decode
            from linfusion_engine.strategies.render import render_stages  # lazy: torch (see Engine.__init__)

            render_started = time.perf_counter()
            # issue 6: LoRAs, IP-Adapter and ControlNets applied for this render only
            with PeakMemory(self.device) as peak, self.conditioning_state().applied(
                    pipe, self.linfusion, request.conditioning(), float(request.guidance),
                    linear_controlnet=request.controlnet_linear) as conditioned:
                image, stages_meta = render_stages(self, request, width, height, generator, conditioned)
            stages_meta["conditioning"] = conditioned.metadata()
            render_s = time.perf_counter() - render_started
            used = self.attention_backend
            truncated = self._prompt_truncation(request)

        # 6. Metadata
        metadata = {
            "engine_version": __version__,
            "versions": dict(library_versions()),
            "device": str(self.device),
            "device_name": device_description(self.device),
            "dtype": dtype_name(self.dtype),
            "attention": used,
            "attention_requested": request.attention,
            "model": self.entry.name,
            "family": self.entry.family,
            "model_identity": self._identity,
            "base": self.entry.base,
            "base_format": self.entry.base_format,
            "linfusion": self.entry.linfusion,
            "weights": dict(self._weights),
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "prompt_truncated": truncated,
            "seed": request.seed,
            "width": width,
            "height": height,
            "steps": request.steps,
            "guidance": float(request.guidance),
            "scheduler": request.scheduler,
            "timings": {"load_s": round(load_s, 4), "render_s": round(render_s, 4),
                        "total_s": round(time.perf_counter() - started, 4)},
            "peak_memory_bytes": peak.bytes,
            "peak_memory_source": peak.source,
            "process_peak_rss_bytes": process_peak_rss_bytes(),
            **stages_meta,  # strategy, stages, tiling, memory (linfusion_engine.strategies.render)
        }
        return RenderResult(image=image, metadata=metadata)


# ModelNotAvailableError, SCHEDULER_NAMES and ATTENTION_MODES (linfusion_engine.capabilities) are
# re-exported: callers of the engine find them here.
__all__ = ["ATTENTION_MODES", "Engine", "ModelNotAvailableError", "RenderRequest", "RenderResult", "SCHEDULER_NAMES",
           "choose_attention", "hub_offline"]
