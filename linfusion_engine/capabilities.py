"""What the engine can do, declared once: sizes, strategies, attention modes, conditioning, features.

Torch-free and importing nothing of ours, so that manifest validation, `linstudio plan`, the
catalogue's re-render planning and the gallery can all ask it without loading a model. Every
other room builds its checks from these names instead of writing its own copy: a new strategy or
conditioning type is added here and the manifest schema, the plan and the gallery follow.
"""

from __future__ import annotations

# -- sizes ------------------------------------------------------------------------------------------
SIZE_STEP = 8  # the VAE downsamples 8x: a side that is not a multiple of 8 has no latent
MAX_SIDE = 16384  # the largest side LinFusion is published at (16K); beyond it nothing is tested


def size_problem(width: object, height: object) -> str | None:
    """Why `width` x `height` cannot be rendered (one sentence), or None when it can.

    The one size rule: each side a positive whole number of pixels, a multiple of SIZE_STEP, at
    most MAX_SIDE. Callers add where the size came from (a manifest line, a CLI flag, a form).
    """
    for side, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{side} must be a whole number of pixels, got {value!r}"
        if value <= 0:
            return f"{side} must be positive, got {value}"
        if value % SIZE_STEP:
            return f"{side} must be a multiple of {SIZE_STEP}, got {value}"
        if value > MAX_SIDE:
            return f"{side} must be at most {MAX_SIDE}, got {value}"
    return None


def check_size(width: object, height: object) -> None:
    """Raise ValueError with `size_problem`'s sentence when the size cannot be rendered."""
    problem = size_problem(width, height)
    if problem is not None:
        raise ValueError(problem)
