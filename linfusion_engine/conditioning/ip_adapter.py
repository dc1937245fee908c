"""IP-Adapter with LinFusion, whichever is loaded first, switched on only for the renders that use it.

diffusers' `load_ip_adapter` does three things to the UNet: it rebuilds *every* attention
processor — attn1 ones as `type(processor)()`, with no arguments — it puts IP-Adapter processors
(with their own to_k_ip / to_v_ip weights) on attn2, and it sets `encoder_hid_proj` so that the
UNet then *requires* image embeddings on every call.

- With LinFusion mounted first, attn1 becomes weightless linear attention (our processor is
  no-arg constructible for exactly this) and LinFusion's trained layers are off the UNet. The fix
  is `LinFusion.unmount(unet)` (which restores the attn1 processors from before the mount and
  leaves attn2 alone) then `linfusion.mount(unet)` again.
- With the IP-Adapter loaded first, mounting LinFusion later touches attn1 only: they coexist.
- Because a loaded IP-Adapter makes image embeddings mandatory, `IpAdapterState` keeps its
  attn2 processors and projection aside and `attach`es them only while a render uses reference
  images; `detach` restores the UNet exactly as it was before loading.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from torch import nn

# Where the weights are in an IP-Adapter folder: checked by `linstudio models add`, read here.
from linfusion_engine.file_checks import ip_adapter_files
from linfusion_engine.linfusion import LinFusion, is_mounted
from linfusion_engine.loading import hub_offline, quiet_progress_bars, quiet_transformers


@contextlib.contextmanager
def quiet_diffusers():
    """Errors only from diffusers while loading: `load_ip_adapter` ends with `unet.to(dtype=...)`,
    which warns about "modules to keep in float32" (there are none) on every load."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


class IpAdapterState:
    """An IP-Adapter loaded on a pipeline, kept detached between the renders that use it.

    Build it with `load(pipeline, folder, linfusion)`; then `attach(scale)` before a render with
    reference images and `detach()` after.
    """

    def __init__(self, unet: nn.Module, ip_processors: dict, encoder_hid_proj: nn.Module,
                 plain_processors: dict, source: str) -> None:
        self.unet = unet
        self.ip_processors = ip_processors  # attn2 name -> IP-Adapter processor
        self.plain_processors = plain_processors  # attn2 name -> the processor before loading
        self.encoder_hid_proj = encoder_hid_proj
        self.source = source
        self.attached = False

    @classmethod
    def load(cls, pipeline, folder: str | Path, linfusion=None, source: str = "") -> "IpAdapterState":
        """Load the IP-Adapter in `folder` onto `pipeline`, then leave it detached.

        Whatever attention the UNet's attn1 ran before (softmax, or LinFusion mounted) it runs
        again afterwards, LinFusion's trained layers included.
        """
        unet = pipeline.unet
        folder = Path(folder)
        if folder.is_file():  # one weights file, its image_encoder/ beside it (the published models/ layout)
            folder, subfolder, weight_name = folder.parent, "", folder.name
        else:
            subfolder, weight_name = ip_adapter_files(folder)
        cross = [name for name in unet.attn_processors if not name.endswith("attn1.processor")]
        plain = {name: unet.attn_processors[name] for name in cross}
        was_mounted = is_mounted(unet)
        with hub_offline(), quiet_transformers(), quiet_diffusers(), quiet_progress_bars():
            # subfolder "" (not None) for weights at the root: diffusers finds the image encoder at
            # Path(subfolder, "image_encoder"), which None breaks.
            pipeline.load_ip_adapter(str(folder), subfolder=subfolder, weight_name=weight_name,
                                     local_files_only=True)
        if was_mounted:
            if linfusion is None:
                raise ValueError("LinFusion was mounted on this UNet: pass the LinFusion model to re-mount it")
            # load_ip_adapter rebuilt attn1 as weightless processors: put the trained layers back.
            LinFusion.unmount(unet)
            linfusion.mount(unet)
        current = unet.attn_processors
        state = cls(unet, {name: current[name] for name in cross}, unet.encoder_hid_proj, plain, source or str(folder))
        state.detach(force=True)
        return state

    def attach(self, scale: float) -> None:
        """Switch the IP-Adapter on with `scale` for the next render(s)."""
        for name, processor in self.ip_processors.items():
            processor.scale = [float(scale)] * len(processor.scale)
        self._set(self.ip_processors)
        self.unet.encoder_hid_proj = self.encoder_hid_proj
        self.unet.register_to_config(encoder_hid_dim_type="ip_image_proj")
        self.attached = True

    def detach(self, force: bool = False) -> None:
        """Put the UNet back as it was before loading (attn2 processors, no image projection)."""
        if not self.attached and not force:
            return
        self._set(self.plain_processors)
        self.unet.encoder_hid_proj = None
        self.unet.register_to_config(encoder_hid_dim_type=None)
        self.attached = False

    def _set(self, processors: dict) -> None:
        for name, processor in processors.items():
            self.unet.get_submodule(name[: -len(".processor")]).set_processor(processor)
