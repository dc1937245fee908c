"""Version 1 of the manifest format: the pydantic models teams' YAML is validated against.

This module checks what a single value can be checked for on its own: types, ranges, sizes,
name syntax. Everything that needs more than one value or the world outside the file — duplicate
asset ids, `seeds` with `variants`, registry names, files on disk, the job count — is in
`manifests.checks`, where errors can name the exact key.

Models are strict (`steps: "30"` and `steps: true` are errors, not 30 and 1) and forbid unknown
keys, so a typo is an error with a "did you mean" instead of a silently ignored setting. Every
field carries a description: they end up in the JSON Schema (`linstudio manifest schema`) that
editors show while teams type.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from linfusion_engine.capabilities import (  # what the engine supports: the schema accepts exactly that
    ATTENTION_DESCRIPTION,
    ATTENTION_MODES,
    CONDITIONING,
    CONTROLNET_TYPES,
    MAX_SIDE,
    PROJECTION_TILEABLE,
    PROJECTIONS,
    SIZE_STEP,
    STRATEGIES,
    STRATEGY_TABLE,
    TILE_AXES,
    size_problem,
)
from linfusion_engine.schedulers import SCHEDULER_NAMES

FORMAT_VERSION = 1
TEAMS = ("game", "vr", "film", "ad")
MAX_SEED = 2**32 - 1  # torch generators take 64 bits, but other tools (A1111, ComfyUI) use 32
MAX_VARIANTS = 64
MAX_SEEDS = 64
MAX_SIZES = 32
MAX_STEPS = 200
MAX_GUIDANCE = 30.0
MAX_SCALE = 2.0
MAX_TEXT = 4000  # characters in a prompt; CLIP reads 77 tokens, but long-prompt weighting exists
NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # as linfusion_engine.registry.NAME_RE
SIZE_PATTERN = r"^[1-9][0-9]*x[1-9][0-9]*$"
S3_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+$"

_NAME_RE = re.compile(NAME_PATTERN)
_MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)
_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")

# What an asset gets when neither it nor `defaults` says otherwise. `model` and `sizes` have no
# built-in value on purpose: a production manifest states what it renders with and at which size.
BUILTIN_DEFAULTS: dict[str, Any] = {
    "steps": 30,
    "guidance": 7.5,
    "scheduler": "euler",
    "attention": "auto",
    "negative_prompt": "",
    "strategy": "auto",
    "tags": (),
    "controlnet": (),
    "ip_adapter": None,
    "init_image": None,
    "lora": (),
    "tileable": False,
    "projection": None,
}
REQUIRED_AFTER_DEFAULTS = ("model", "sizes")


# -- value checks with messages people can act on -----------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """`"2048x1024"` -> (2048, 1024). Raises ValueError with a sentence naming the problem.

    The rule is the engine's (`linfusion_engine.capabilities.size_problem`); this only reads the text.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size; write WIDTHxHEIGHT, e.g. 1024x1024")
    width, height = int(match.group(1)), int(match.group(2))
    problem = size_problem(width, height)
    if problem is not None:
        raise ValueError(f"{text}: {problem}")
    return width, height


def _size(value: Any) -> Any:
    if isinstance(value, bool) or isinstance(value, (int, float)):
        raise ValueError(f"{value} is not a size; write WIDTHxHEIGHT, e.g. {value}x{value}")
    if not isinstance(value, str):
        return value  # the str validator names the type
    width, height = parse_size(value)
    return f"{width}x{height}"


def _name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"{value!r} may contain only letters, digits, '-' and '_'")
    return value


def _model_name(value: str) -> str:
    if not _MODEL_NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a registry name (letters, digits, '.', '-' and '_')")
    return value


def _not_blank(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


def _file_ref(value: str) -> str:
    if not value:
        raise ValueError("empty path")
    if "\x00" in value:
        raise ValueError("a path cannot contain a NUL character")
    return value


def _tileable(value: Any) -> Any:
    if isinstance(value, bool) or value in TILE_AXES:
        return value
    shown = repr(value) if isinstance(value, str) else value
    raise ValueError(f"must be false, true, {' or '.join(TILE_AXES)} (got {shown})")


def _one_or_many(value: Any) -> Any:
    """`controlnet: {type: canny, ...}` is shorthand for a list of one."""
    return [value] if isinstance(value, dict) else value


def _none_is_empty(value: Any) -> Any:
    """`defaults:` with every line commented out reads as null: the same as no defaults."""
    return {} if value is None else value


Size = Annotated[str, BeforeValidator(_size), WithJsonSchema({
    "type": "string", "pattern": SIZE_PATTERN,
    "description": f"WIDTHxHEIGHT in pixels, each a multiple of {SIZE_STEP} from {SIZE_STEP} to {MAX_SIDE}"})]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Tag = Annotated[str, Field(min_length=1, max_length=64)]
FileRef = Annotated[str, AfterValidator(_file_ref), WithJsonSchema({
    "type": "string", "minLength": 1,
    "description": "A path relative to the manifest's folder, an absolute path under a shared root "
                   "(LINSTUDIO_SHARED_ROOTS), or an s3:// URI"})]
Tileable = Annotated[Union[bool, str], BeforeValidator(_tileable), WithJsonSchema({"enum": [False, True, *TILE_AXES]})]


class _Strict(BaseModel):
    """Strict, closed, immutable: a manifest says exactly what it means."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False,
                              str_strip_whitespace=True)


# -- conditioning inputs --------------------------------------------------------------------------
def _about(field_name: str, shape: str = "") -> str:
    """A conditioning field's description: what capabilities says the type is, and how it is written."""
    kind = next(c for c in CONDITIONING if c.manifest_field == field_name)
    text = kind.description[0].upper() + kind.description[1:]
    return f"{text}: {shape}." if shape else f"{text}."


class ControlNet(_Strict):
    """A control map steering the composition (edges, depth, pose...)."""

    type: Literal[CONTROLNET_TYPES] = Field(
        description="What the control map shows: " + ", ".join(CONTROLNET_TYPES) + ".")
    image: FileRef = Field(description="The control map image (PNG, JPEG, WebP or TIFF).")
    scale: float = Field(1.0, ge=0, le=MAX_SCALE,
                         description=f"How strongly the map steers, 0 to {MAX_SCALE:g} (default 1).")


class IpAdapter(_Strict):
    """Reference images whose look (mood, palette, style) the render borrows."""

    images: list[FileRef] = Field(min_length=1, max_length=8,
                                  description="One to eight reference images (PNG, JPEG, WebP or TIFF).")
    scale: float = Field(1.0, ge=0, le=MAX_SCALE,
                         description=f"How strongly the references steer, 0 to {MAX_SCALE:g} (default 1).")


class InitImage(_Strict):
    """An image to start from (a paint-over, a previous render): image-to-image or inpainting."""

    image: FileRef = Field(description="The starting image (PNG, JPEG, WebP or TIFF).")
    strength: float = Field(0.5, gt=0, le=1,
                            description="How much to change it: above 0 (barely) to 1 (ignore it); default 0.5.")
    mask: FileRef | None = Field(None, description="Optional mask image: white is repainted, black is kept.")


class Lora(_Strict):
    """A LoRA registered with the asset's model (`linstudio models add ... --lora NAME=FILE`)."""

    name: Annotated[str, AfterValidator(_model_name)] = Field(
        description="The LoRA's name in the model's registry entry.")
    scale: float = Field(1.0, ge=0, le=MAX_SCALE, description=f"LoRA weight, 0 to {MAX_SCALE:g} (default 1).")


# -- assets ----------------------------------------------------------------------------------------
class AssetFields(_Strict):
    """Every setting an asset may give, and so every setting `defaults` may give.

    None means "not given here": the asset falls back to `defaults`, then to the built-in value.
    """

    model: Annotated[str, AfterValidator(_model_name)] | None = Field(
        None, description="Model registry name: sd15, sd21, sdxl, tiny-sd15, tiny-sdxl or a studio's own "
                          "(`linstudio models ls`). Required on the asset or in defaults.")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS,
                              description=f"Denoising steps, 1 to {MAX_STEPS} (default {BUILTIN_DEFAULTS['steps']}).")
    guidance: float | None = Field(
        None, ge=0, le=MAX_GUIDANCE,
        description=f"Classifier-free guidance scale, 0 to {MAX_GUIDANCE:g} (default {BUILTIN_DEFAULTS['guidance']}).")
    scheduler: Literal[SCHEDULER_NAMES] | None = Field(
        None, description="Sampler: " + ", ".join(SCHEDULER_NAMES) + " (default euler).")
    attention: Literal[ATTENTION_MODES] | None = Field(None, description=f"{ATTENTION_DESCRIPTION} (default auto).")
    negative_prompt: str | None = Field(None, max_length=MAX_TEXT,
                                        description="What the render should avoid (default empty).")
    sizes: Annotated[list[Size], Field(min_length=1, max_length=MAX_SIZES)] | None = Field(
        None, description=f"Output sizes as WIDTHxHEIGHT, multiples of {SIZE_STEP} up to {MAX_SIDE} per side; "
                          "one render per size and seed. Required on the asset or in defaults.")
    seeds: Annotated[list[Seed], Field(min_length=1, max_length=MAX_SEEDS)] | None = Field(
        None, description=f"Explicit seeds, 0 to {MAX_SEED}; one render per seed and size. "
                          "Give seeds or variants, not both.")
    variants: int | None = Field(
        None, ge=1, le=MAX_VARIANTS,
        description=f"Number of seeds to derive from the asset id (1 to {MAX_VARIANTS}; default 1): "
                    "the same id always gives the same seeds. Give seeds or variants, not both.")
    strategy: Literal[STRATEGIES] | None = Field(
        None, description="How large sizes are reached: " + "; ".join(f"{s.name} ({s.description})"
                                                                      for s in STRATEGY_TABLE) + ".")
    tags: list[Tag] | None = Field(None, max_length=32,
                                   description="Labels for finding renders in the catalogue; not part of the job key.")
    controlnet: Annotated[list[ControlNet], BeforeValidator(
        _one_or_many, json_schema_input_type=Union[ControlNet, list[ControlNet]]),
        Field(min_length=1, max_length=4)] | None = Field(
        None, description=_about("controlnet", "one, or a list of up to four"))
    ip_adapter: IpAdapter | None = Field(None, description=_about("ip_adapter"))
    init_image: InitImage | None = Field(None, description=_about("init_image"))
    lora: Annotated[list[Lora], BeforeValidator(
        _one_or_many, json_schema_input_type=Union[Lora, list[Lora]]),
        Field(min_length=1, max_length=8)] | None = Field(
        None, description=_about("lora", "one, or a list of them"))
    tileable: Tileable | None = Field(
        None, description="false (default); true: tiles on both axes (game textures); x: wraps horizontally "
                          "(360-degree panoramas); y: wraps vertically.")
    projection: Literal[PROJECTIONS] | None = Field(
        None, description="How the image is meant to be seen: equirectangular marks a 360-degree VR panorama "
                          "(sizes must be 2:1; implies tileable: x). The gallery opens it in a 360-degree viewer.")


# The input model of each conditioning field. Checked against the engine's declaration at import:
# a type declared in capabilities without its field here, or a field here the engine does not
# declare, fails at once rather than at a team's first render.
CONDITIONING_INPUTS: dict[str, type[_Strict]] = {
    "controlnet": ControlNet, "ip_adapter": IpAdapter, "init_image": InitImage, "lora": Lora}


def _check_conditioning_fields() -> None:
    declared = {c.manifest_field for c in CONDITIONING}
    missing = sorted((declared | set(CONDITIONING_INPUTS)) - set(AssetFields.model_fields))
    if set(CONDITIONING_INPUTS) != declared or missing:
        raise AssertionError(f"manifest conditioning fields {sorted(CONDITIONING_INPUTS)} (missing from AssetFields: "
                             f"{missing}) differ from linfusion_engine.capabilities' {sorted(declared)}")


_check_conditioning_fields()


class Defaults(AssetFields):
    """Settings every asset of the manifest inherits unless it gives its own (any asset field but id and prompt)."""


class Asset(AssetFields):
    """One thing to render: a prompt, rendered at every size with every seed."""

    model_config = ConfigDict(json_schema_extra={"not": {"required": ["seeds", "variants"]}})

    id: Annotated[str, AfterValidator(_name)] = Field(
        max_length=128, description="Unique in the manifest; letters, digits, '-' and '_' only. "
                                    "Names the output folder and derives the seeds of `variants`.",
        json_schema_extra={"pattern": NAME_PATTERN})
    prompt: Annotated[str, AfterValidator(_not_blank)] = Field(
        max_length=MAX_TEXT, description="What to render.", json_schema_extra={"minLength": 1})


class Manifest(_Strict):
    """A team's request for renders (format version 1)."""

    version: Literal[FORMAT_VERSION] = Field(description="Format version; this linstudio reads version 1.")
    team: Literal[TEAMS] = Field(description="The team asking: " + ", ".join(TEAMS) + ".")
    project: Annotated[str, AfterValidator(_name)] = Field(
        max_length=128, description="Project name; letters, digits, '-' and '_' only.",
        json_schema_extra={"pattern": NAME_PATTERN})
    defaults: Annotated[Defaults, BeforeValidator(_none_is_empty, json_schema_input_type=Defaults)] = Field(
        default_factory=Defaults, description="Settings every asset inherits unless it gives its own.")
    assets: list[Asset] = Field(min_length=1, description="The things to render; at least one.")


# -- what an asset means once defaults are applied ------------------------------------------------
@dataclass(frozen=True)
class ResolvedAsset:
    """An asset with every setting decided.

    Args:
        index: position in `assets`.
        origin: setting name -> key path it came from (`assets[2].model` or `defaults.model`); settings
            left at their built-in value are absent. Errors about a setting point there.
        sizes: (width, height) pairs. seeds: explicit or derived from the id.
    """

    index: int
    id: str
    prompt: str
    negative_prompt: str
    model: str
    steps: int
    guidance: float
    scheduler: str
    attention: str
    strategy: str
    sizes: tuple[tuple[int, int], ...]
    seeds: tuple[int, ...]
    tags: tuple[str, ...]
    controlnet: tuple[ControlNet, ...]
    ip_adapter: IpAdapter | None
    init_image: InitImage | None
    lora: tuple[Lora, ...]
    tileable: bool | str
    projection: str | None = None
    origin: dict[str, str] = field(default_factory=dict, compare=False)


def derive_seeds(asset_id: str, count: int) -> tuple[int, ...]:
    """Seeds for `variants: N`: the first 4 bytes of sha256("ID:i"), so the same id always gives the same seeds."""
    return tuple(int.from_bytes(hashlib.sha256(f"{asset_id}:{i}".encode()).digest()[:4], "big")
                 for i in range(count))


def setting_origin(defaults: AssetFields, asset: AssetFields, index: int, name: str) -> str | None:
    """The key path that decides setting `name` of asset `index`, or None when the built-in value does."""
    if getattr(asset, name) is not None:
        return f"assets[{index}].{name}"
    if getattr(defaults, name) is not None:
        return f"defaults.{name}"
    return None


def _seed_source(defaults: AssetFields, asset: AssetFields) -> AssetFields | None:
    """Seeds and variants travel as a pair: an asset giving either replaces both from defaults."""
    for fields in (asset, defaults):
        if fields.seeds is not None or fields.variants is not None:
            return fields
    return None


def missing_settings(defaults: AssetFields, asset: AssetFields) -> list[str]:
    """Required settings neither the asset nor defaults gives (`model`, `sizes`)."""
    return [name for name in REQUIRED_AFTER_DEFAULTS
            if getattr(asset, name) is None and getattr(defaults, name) is None]


def resolve_asset(defaults: AssetFields, asset: Asset, index: int) -> ResolvedAsset:
    """Apply defaults and built-in values to asset `index`. Raises ValueError when model or sizes is missing."""
    missing = missing_settings(defaults, asset)
    if missing:
        raise ValueError(f"asset {asset.id!r} has no {' and no '.join(missing)}")
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name in AssetFields.model_fields:
        if name in ("seeds", "variants"):
            continue
        where = setting_origin(defaults, asset, index, name)
        if where is None:
            values[name] = BUILTIN_DEFAULTS[name]
        else:
            origin[name] = where
            values[name] = getattr(asset if where.startswith("assets") else defaults, name)
    source = _seed_source(defaults, asset)
    if source is not None and source.seeds is not None:
        seeds = tuple(source.seeds)
    else:
        seeds = derive_seeds(asset.id, source.variants if source is not None else 1)
    if source is not None:
        prefix = f"assets[{index}]" if source is asset else "defaults"
        origin["seeds"] = f"{prefix}.{'seeds' if source.seeds is not None else 'variants'}"
    return ResolvedAsset(
        index=index, id=asset.id, prompt=asset.prompt, negative_prompt=values["negative_prompt"],
        model=values["model"], steps=values["steps"], guidance=float(values["guidance"]),
        scheduler=values["scheduler"], attention=values["attention"], strategy=values["strategy"],
        sizes=tuple(parse_size(s) for s in values["sizes"]), seeds=seeds, tags=tuple(values["tags"]),
        controlnet=tuple(values["controlnet"]), ip_adapter=values["ip_adapter"],
        init_image=values["init_image"], lora=tuple(values["lora"]), tileable=_tileable_for(values, origin),
        projection=values["projection"], origin=origin)


def _tileable_for(values: dict[str, Any], origin: dict[str, str]) -> bool | str:
    """The asset's tileable, or the one its projection implies when it does not say (equirectangular: x)."""
    if "tileable" not in origin and values["projection"] is not None:
        return PROJECTION_TILEABLE[values["projection"]]
    return values["tileable"]


def manifest_json_schema() -> dict:
    """The JSON Schema of format version 1, with the `$schema` line editors look for."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Manifest.model_json_schema()}
