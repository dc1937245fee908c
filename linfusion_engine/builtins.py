"""`builtin:` locations: models built on this machine on first use, by a builder the engine does not import.

The registry names a few models by a `builtin:NAME` location rather than a path or a hub id: the
random-weight `tiny-sd15` and `tiny-sdxl` and their ControlNets, IP-Adapter and LoRA, which the
demo, the tests and CI render with on a laptop CPU. Building them is test tooling, not inference,
so the code that does it lives outside the engine, in a package that stands on the engine and is
never imported by it: the engine says here what a builder must do (`BuiltinBuilder`) and finds
the installed builders through the Python entry-point group `linfusion_engine.builtin_models`
(pyproject.toml declares the tiny models' builder there; see docs/architecture.md). A worker installed without a builder fails the first render of a
`builtin:` model with a message naming the group, not with an ImportError from deep in a load.

This module imports neither torch nor any builder: the registry and manifest validation import the
engine without them, and entry points are only loaded when something has to be built.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol, runtime_checkable

from linfusion_engine.registry import BUILTIN_PREFIX, ModelNotAvailableError

ENTRY_POINT_GROUP = "linfusion_engine.builtin_models"


@runtime_checkable
class BuiltinBuilder(Protocol):
    """What an entry point of `ENTRY_POINT_GROUP` must load: an object that builds some `builtin:` names.

    `name` is the location without its `builtin:` prefix (`tiny-sd15`, `tiny-sd15-controlnet-canny`).
    """

    def provides(self, name: str) -> bool:
        """True when this builder builds `builtin:NAME` (several builders may be installed side by side)."""
        ...

    def build(self, name: str, folder: Path, models_dir: Path) -> Path:
        """Make `folder` hold the finished model `name`, building it first if it is not there; return `folder`.

        `folder` is `registry.resolve_location("builtin:NAME", models_dir)`; `models_dir` is the
        registry's HOME/models, where a part can find (or build) the base model it belongs to.
        A build must be deterministic and must never leave a half-written `folder` behind.
        """
        ...


class BuiltinBuilderMissingError(ModelNotAvailableError):
    """No installed builder provides a `builtin:` location (the message names the entry-point group)."""


def installed_builders() -> dict[str, BuiltinBuilder]:
    """The builders the entry points of `ENTRY_POINT_GROUP` load, by entry-point name.

    Read fresh on every call (tens of milliseconds, paid only when a `builtin:` model is loaded),
    so an install or a test's stand-in is seen at once.
    """
    builders = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        builder = point.load()
        if not isinstance(builder, BuiltinBuilder):
            raise TypeError(f"entry point {point.name} = {point.value} in group {ENTRY_POINT_GROUP!r} loads "
                            f"{builder!r}, which has no provides(name) and build(name, folder, models_dir)")
        builders[point.name] = builder
    return builders


def find_builder(name: str) -> BuiltinBuilder:
    """The installed builder of `builtin:NAME`, or BuiltinBuilderMissingError saying how to install one."""
    builders = installed_builders()
    for builder in builders.values():
        if builder.provides(name):
            return builder
    installed = ", ".join(sorted(builders)) or "none"
    raise BuiltinBuilderMissingError(
        f"{BUILTIN_PREFIX}{name}: no installed builder provides it (entry-point group {ENTRY_POINT_GROUP!r}; "
        f"installed: {installed}). The tiny models' builder ships with the linfusion-studio package: install "
        f"it (`pip install -e .`) so that its entry point is registered")


def ensure_built(location: str, folder: str | Path, models_dir: str | Path) -> Path:
    """The folder of `builtin:` location `location`, built there first by its installed builder if needed."""
    if not location.startswith(BUILTIN_PREFIX):
        raise ValueError(f"{location!r} is not a {BUILTIN_PREFIX} location")
    name = location[len(BUILTIN_PREFIX):]
    return Path(find_builder(name).build(name, Path(folder), Path(models_dir)))
