"""LinFusion engine: Stable Diffusion whose self-attention is generalized linear attention.

Knows nothing of Prefect, databases or object stores. Heavy imports (torch, diffusers) are
deferred so that `linfusion_engine.registry` can be used by manifest validation, which must
answer in about a second without importing torch.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "generalized_linear_attention": "linfusion_engine.attention",
    "GeneralizedLinearAttnProcessor": "linfusion_engine.processor",
    "LinFusion": "linfusion_engine.linfusion",
    "Engine": "linfusion_engine.engine",
    "RenderRequest": "linfusion_engine.requests",
    "RenderResult": "linfusion_engine.requests",
    "ModelRegistry": "linfusion_engine.registry",
    "ModelEntry": "linfusion_engine.registry",
}


class _TorchvisionFallbackNotice(logging.Filter):
    """Drops transformers' "requires torchvision (not installed); falling back to ...Pil" notices.

    Importing diffusers pipelines touches CLIP/Siglip image processors; without torchvision
    transformers falls back to the PIL ones and says so once per class. The engine works the same
    either way (no torchvision is needed), so the notice only alarms users running the CLI.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackNotice())


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'linfusion_engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_LAZY) + ["__version__"]
