"""The builder of every `builtin:tiny-*` location, as the engine's entry point finds it.

pyproject.toml declares `tiny = "linfusion_devkit.builtin_models:TINY_BUILDER"` in the entry-point group
`linfusion_engine.builtin_models`; the engine (`linfusion_engine.builtins`) loads it the first time
a registry entry points at `builtin:tiny-sd15`, `builtin:tiny-sdxl-controlnet-canny` and the like,
and asks it to build that location. Importing this module imports no torch: the builds do.
"""

from __future__ import annotations

from pathlib import Path

from linfusion_devkit.tiny import TINY_MODELS, ensure_tiny_model
from linfusion_devkit.tiny_conditioning import ensure_tiny_conditioning, is_tiny_conditioning


class TinyModels:
    """Builds the tiny base models and their conditioning parts (a `linfusion_engine.builtins.BuiltinBuilder`)."""

    def provides(self, name: str) -> bool:
        return name in TINY_MODELS or is_tiny_conditioning(name)

    def build(self, name: str, folder: Path, models_dir: Path) -> Path:
        if name in TINY_MODELS:
            return ensure_tiny_model(name, folder)
        return ensure_tiny_conditioning(name, folder, models_dir)


TINY_BUILDER = TinyModels()
