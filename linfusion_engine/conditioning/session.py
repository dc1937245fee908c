"""The engine's conditioning state and the per-render session that applies and undoes it.

An engine keeps, for its one loaded pipeline: the ControlNets it has loaded (one per control
type, loaded on first use), its IP-Adapter (loaded on first use, detached between renders), and
nothing of LoRAs between renders — LoRA deltas are applied for one render and restored after it,
so a render without a LoRA never sees one, and a failed render leaves no LoRA behind.

Usage (engine.render, under the engine's lock):

    with engine_conditioning.applied(pipeline, linfusion, conditioning, guidance) as session:
        ctx = session.context(**strategy_context_kwargs)
        image = run_strategy(ctx, plan)
    metadata["conditioning"] = session.metadata()
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from linfusion_engine.builtins import ensure_built
from linfusion_engine.conditioning.context import ConditionedContext
from linfusion_engine.conditioning.controlnet import ControlNetBank
from linfusion_engine.conditioning.inputs import Conditioning
from linfusion_engine.conditioning.ip_adapter import IpAdapterState
from linfusion_engine.conditioning.lora import apply_loras, lora_file
from linfusion_engine.linfusion import is_mounted
from linfusion_engine.registry import BUILTIN_PREFIX


class EngineConditioning:
    """What an engine has loaded for conditioning (see the module docstring).

    Args:
        registry, entry: where ControlNets, IP-Adapter and LoRAs are looked up.
        device, dtype: where they are loaded.
        linear_controlnet: the switch: True (default) gives ControlNets linear self-attention
            whenever the UNet runs LinFusion; False leaves them softmax.
    """

    def __init__(self, registry, entry, *, device, dtype, linear_controlnet: bool = True) -> None:
        self.registry, self.entry = registry, entry
        self.device, self.dtype = device, dtype
        self.linear_controlnet = linear_controlnet
        self.controlnets = ControlNetBank(registry, entry, device=device, dtype=dtype)
        self.ip_adapter = None  # IpAdapterState once loaded

    def check_available(self, conditioning: Conditioning) -> None:
        """Fail before rendering when a named ControlNet, IP-Adapter or LoRA is unknown or absent."""
        for control in conditioning.controlnets:
            self.registry.require_conditioning(self.entry, "controlnet", control.type)
        if conditioning.ip_adapter is not None:
            self.registry.require_conditioning(self.entry, "ip_adapter")
        for lora in conditioning.loras:
            self.registry.require_conditioning(self.entry, "lora", lora.name)

    def load_ip_adapter(self, pipeline, linfusion):
        """Load the entry's IP-Adapter onto `pipeline` once (LinFusion kept or re-mounted)."""
        if self.ip_adapter is None:
            location = self.registry.require_conditioning(self.entry, "ip_adapter")
            folder = Path(self.registry.conditioning_path(location))
            if location.startswith(BUILTIN_PREFIX):
                ensure_built(location, folder, self.registry.models_dir)
            self.ip_adapter = IpAdapterState.load(pipeline, folder, linfusion, source=location)
        return self.ip_adapter

    @contextlib.contextmanager
    def applied(self, pipeline, linfusion, conditioning: Conditioning, guidance: float,
                linear_controlnet: bool = True) -> Iterator["RenderSession"]:
        """LoRAs applied and the IP-Adapter attached for the duration; both undone on exit, errors included.

        `linear_controlnet` is the per-render switch (see the class docstring).
        """
        conditioning.check()
        self.check_available(conditioning)
        self.linear_controlnet = bool(linear_controlnet)
        session = RenderSession(self, pipeline, linfusion, conditioning)
        patch = None
        ip_state = None
        try:
            # 1. ControlNets, loaded once per type.
            session.controlnet_models = [self.controlnets.get(control.type) for control in conditioning.controlnets]
            # 2. IP-Adapter: attached, embeddings computed once for the whole chain.
            if conditioning.ip_adapter is not None:
                ip_state = self.load_ip_adapter(pipeline, linfusion)
                ip_state.attach(conditioning.ip_adapter.scale)
                session.ip_adapter_embeds = pipeline.prepare_ip_adapter_image_embeds(
                    ip_adapter_image=[list(conditioning.ip_adapter.images)], ip_adapter_image_embeds=None,
                    device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=guidance > 1)
            # 3. LoRAs, on the live weights and LinFusion's attn1 copies.
            if conditioning.loras:
                files = [(lora.name, lora_file(self.registry, self.entry, lora.name), float(lora.scale))
                         for lora in conditioning.loras]
                patch = apply_loras(pipeline, files, linfusion)
                session.lora_layers = patch.layers_patched
                session.lora_linfusion_layers = patch.linfusion_patched
            yield session
        finally:
            if patch is not None:
                patch.restore()
            if ip_state is not None:
                ip_state.detach()


class RenderSession:
    """One render's applied conditioning: builds the strategy context and the metadata record."""

    def __init__(self, state: EngineConditioning, pipeline, linfusion, conditioning: Conditioning) -> None:
        self.state, self.pipeline, self.linfusion, self.conditioning = state, pipeline, linfusion, conditioning
        self.controlnet_models: list = []
        self.ip_adapter_embeds = None
        self.lora_layers = 0
        self.lora_linfusion_layers = 0
        self._context = None

    def context(self, **kwargs: Any):
        """A `ConditionedContext` for the strategies (a plain StrategyContext would ignore conditioning)."""
        types = [control.type for control in self.conditioning.controlnets]
        state, linfusion = self.state, self.linfusion

        native = state.entry.native_size

        def set_attention(index: int, unet_backend: str, width: int, height: int) -> str:
            # Linear only above the native size, where softmax's quadratic cost is what LinFusion
            # saves. At or below it the ControlNet keeps its own softmax attention: the UNet's
            # LinFusion layers it borrows were not distilled on its features, and with them
            # shapes-sd15's seg ControlNet lost the map's shape (0 of 6 squares at 128 px against
            # 6 of 6 with softmax; docs/quality.md).
            linear = state.linear_controlnet and unet_backend == "linear" and width * height > native * native
            return state.controlnets.set_attention(types[index], linear, linfusion)

        self._context = ConditionedContext(
            **kwargs, conditioning=self.conditioning, controlnets=self.controlnet_models,
            set_controlnet_attention=set_attention, ip_adapter_embeds=self.ip_adapter_embeds,
            unet_backend=lambda: "linear" if is_mounted(self.pipeline.unet) else "softmax")
        return self._context

    def metadata(self) -> dict:
        """Every conditioning input with its hash and settings, and what each stage got."""
        record = self.conditioning.metadata()
        if not record:
            return {}
        if self.conditioning.controlnets:
            for item in record["controlnet"]:
                item["model"] = self.state.entry.controlnets.get(item["type"])
        if self.conditioning.ip_adapter is not None:
            record["ip_adapter"]["model"] = self.state.entry.ip_adapter
        if self.conditioning.loras:
            for item in record["lora"]:
                item["file"] = self.state.entry.loras.get(item["name"])
            record["lora_layers"] = {"patched": self.lora_layers, "linfusion_patched": self.lora_linfusion_layers}
        record["controlnet_linear_attention"] = self.state.linear_controlnet
        if self._context is not None:
            record["stages"] = list(self._context.stage_records)
        return record
