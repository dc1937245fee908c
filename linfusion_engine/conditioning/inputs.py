"""The conditioning a render request carries, as PIL images and numbers, and its metadata record.

The engine takes images, never paths or URIs: reading files and s3:// objects named by a job
record is the flow's job (`flows.conditioning_inputs`). Every image is hashed here from its
decoded pixels (mode, size and bytes), so the metadata says exactly what the render saw whatever
file format it came in; the flow adds the source file's own sha256 next to it.

Sizes. Control maps, init images and masks may come at any size: each stage of a chain gets
them resized to its own size (`resized`): Lanczos for images; bilinear then binarised at 50% for
masks, so a mask stays a hard mask at every scale.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

MAX_CONTROLNETS = 4
MAX_REFERENCE_IMAGES = 8
MAX_SCALE = 2.0


def image_sha256(image) -> str:
    """sha256 of a PIL image's decoded pixels, mode and size (not of any file encoding)."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def resized(image, width: int, height: int, *, mask: bool = False):
    """`image` at width x height: RGB Lanczos for pictures, an L mask binarised at 50% for masks."""
    from PIL import Image

    if mask:
        grey = image.convert("L")
        if grey.size != (width, height):
            grey = grey.resize((width, height), Image.Resampling.BILINEAR)
        return grey.point(lambda value: 255 if value >= 128 else 0)
    rgb = image.convert("RGB")
    return rgb if rgb.size == (width, height) else rgb.resize((width, height), Image.Resampling.LANCZOS)


def _is_image(value: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(value, Image.Image)


def _check_scale(where: str, scale: Any) -> None:
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 <= scale <= MAX_SCALE:
        raise ValueError(f"{where}: scale must be a number from 0 to {MAX_SCALE:g}, got {scale!r}")


@dataclass
class ControlInput:
    """One control map: `type` (canny, depth...) names the registry's ControlNet; `scale` its weight."""

    type: str
    image: Any
    scale: float = 1.0
    source: dict | None = None  # where it came from (path/uri and file sha256), for the metadata


@dataclass
class IpAdapterInput:
    """Reference images whose look the render borrows, and how strongly."""

    images: list
    scale: float = 1.0
    sources: list[dict] | None = None


@dataclass
class InitInput:
    """An image to start from (a paint-over): `strength` (0, 1] how much to change it; `mask` white = repaint."""

    image: Any
    strength: float = 0.5
    mask: Any = None
    source: dict | None = None
    mask_source: dict | None = None


@dataclass
class LoraInput:
    """A LoRA registered with the model, by name, and its weight."""

    name: str
    scale: float = 1.0


@dataclass
class Conditioning:
    """Everything a request conditions on; empty means plain text-to-image."""

    controlnets: list[ControlInput] = field(default_factory=list)
    ip_adapter: IpAdapterInput | None = None
    init: InitInput | None = None
    loras: list[LoraInput] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.controlnets or self.ip_adapter or self.init or self.loras)

    def check(self) -> None:
        """Raise a short ValueError naming the first invalid field. Needs no model and no torch."""
        if len(self.controlnets) > MAX_CONTROLNETS:
            raise ValueError(f"controlnets: at most {MAX_CONTROLNETS}, got {len(self.controlnets)}")
        for i, control in enumerate(self.controlnets):
            if not isinstance(control.type, str) or not control.type:
                raise ValueError(f"controlnets[{i}].type must be a control type name, got {control.type!r}")
            if not _is_image(control.image):
                raise ValueError(f"controlnets[{i}].image must be a PIL image, got {type(control.image).__name__}")
            _check_scale(f"controlnets[{i}]", control.scale)
        if self.ip_adapter is not None:
            images = self.ip_adapter.images
            if not isinstance(images, (list, tuple)) or not 1 <= len(images) <= MAX_REFERENCE_IMAGES:
                raise ValueError(f"ip_adapter.images: one to {MAX_REFERENCE_IMAGES} PIL images")
            for i, image in enumerate(images):
                if not _is_image(image):
                    raise ValueError(f"ip_adapter.images[{i}] must be a PIL image, got {type(image).__name__}")
            _check_scale("ip_adapter", self.ip_adapter.scale)
        if self.init is not None:
            if not _is_image(self.init.image):
                raise ValueError(f"init_image must be a PIL image, got {type(self.init.image).__name__}")
            strength = self.init.strength
            if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not 0 < strength <= 1:
                raise ValueError(f"init_image strength must be in (0, 1], got {strength!r}")
            if self.init.mask is not None and not _is_image(self.init.mask):
                raise ValueError(f"init_image mask must be a PIL image, got {type(self.init.mask).__name__}")
        names = [lora.name for lora in self.loras]
        for i, lora in enumerate(self.loras):
            if not isinstance(lora.name, str) or not lora.name:
                raise ValueError(f"loras[{i}].name must be a registered LoRA name, got {lora.name!r}")
            _check_scale(f"loras[{i}]", lora.scale)
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"loras: {', '.join(duplicates)} given more than once")

    def metadata(self) -> dict:
        """Every input with its pixel hash, size and settings (and its source file, when known)."""
        record: dict[str, Any] = {}

        def image_record(image, source: dict | None) -> dict:
            entry = {"sha256": image_sha256(image), "width": image.width, "height": image.height}
            if source:
                entry["source"] = dict(source)
            return entry

        if self.controlnets:
            record["controlnet"] = [{"type": c.type, "scale": float(c.scale), "image": image_record(c.image, c.source)}
                                    for c in self.controlnets]
        if self.ip_adapter is not None:
            sources = self.ip_adapter.sources or [None] * len(self.ip_adapter.images)
            record["ip_adapter"] = {"scale": float(self.ip_adapter.scale),
                                    "images": [image_record(image, source)
                                               for image, source in zip(self.ip_adapter.images, sources)]}
        if self.init is not None:
            record["init_image"] = {
                "strength": float(self.init.strength), "image": image_record(self.init.image, self.init.source),
                "mask": image_record(self.init.mask, self.init.mask_source) if self.init.mask is not None else None}
        if self.loras:
            record["lora"] = [{"name": lora.name, "scale": float(lora.scale)} for lora in self.loras]
        return record
