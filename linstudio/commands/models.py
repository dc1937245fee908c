"""`linstudio models`: list the model registry, show one entry, and register a studio's own models.

A studio's models arrive as single-file checkpoints (`.safetensors` / `.ckpt`, the A1111 /
ComfyUI layout), diffusers folders or HF cache snapshots, with VAE, LoRA, ControlNet and
IP-Adapter files beside them. `models add` checks each file before writing anything
(`linfusion_engine.file_checks`, reading keys and shapes only): the family is told from the checkpoint, a wrong file (a LoRA
given as --base, a truncated download, a pickle with code in it) is refused with one line naming
the file, and nothing is written to models.yaml unless every part checked out.

`ls`, `show` and `add` of a folder or safetensors file do not import torch (a `.ckpt` is a
pickle: reading its keys needs torch.load). Errors print one line and exit with code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import typer

from linfusion_engine.checkpoints import CheckpointError, NATIVE_SIZES
from linfusion_engine.file_checks import (
    FamilyMismatchError,
    check_base,
    check_controlnet,
    check_ip_adapter,
    check_lora,
    check_vae,
)
from linfusion_engine.registry import (
    BUILTIN_ENTRIES,
    BUILTIN_PREFIX,
    FAMILIES,
    HUB_ID_RE,
    ModelEntry,
    ModelRegistry,
    PREDICTION_TYPES,
    UnknownModelError,
    cached_snapshot,
    location_format,
    size_on_disk,
)
from linstudio_settings import get_settings

models_app = typer.Typer(
    name="models",
    help="List and register base models and their LinFusion weights.",
    no_args_is_help=True,
)

LINFUSION_KEYWORDS = ("from_unet", "none")
UNTRAINED_NOTE = ("untrained: LinFusion layers built from the UNet's own attention, not distilled (an untrained "
                  "start; train them with `linstudio distill`)")


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _registry():
    try:
        return ModelRegistry.from_settings(get_settings())
    except ValueError as exc:  # a broken registry file: say which and where, in one line
        _fail(str(exc).replace("\n", " "))


def _short_status(problems: list[str]) -> str:
    """'yes', or 'missing: base, linfusion' — the table's column; --json carries the sentences."""
    if not problems:
        return "yes"
    parts = [problem.split(":", 1)[0].replace("base model", "base").replace("LinFusion weights", "linfusion")
             for problem in problems]
    return "missing: " + ", ".join(parts)


def _human_size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def linfusion_state(entry) -> str:
    """How an entry's LinFusion layers come about: `published`/`trained`, `untrained` or `none`."""
    if entry.linfusion == "none":
        return "none (softmax only)"
    if entry.linfusion == "from_unet":
        return "untrained (from_unet)"

    return f"trained ({location_format(entry.linfusion)})"


def _row(registry, entry) -> dict:
    problems = registry.missing(entry)
    return {
        "name": entry.name,
        "family": entry.family,
        "native_size": entry.native_size,
        "format": entry.base_format,
        "size_bytes": _size(registry, entry),
        "base": entry.base,
        "vae": entry.vae,
        "prediction_type": entry.prediction_type,
        "sdedit_strengths": list(entry.sdedit_strengths) if entry.sdedit_strengths else None,
        "linfusion": entry.linfusion,
        "linfusion_state": linfusion_state(entry),
        "loras": dict(entry.loras),
        "controlnets": dict(entry.controlnets),
        "ip_adapter": entry.ip_adapter,
        "builtin": entry.builtin,
        "available": not problems,
        "missing": problems,
        "description": entry.description,
    }


def _size(registry, entry) -> int | None:
    """Bytes on disk of the base (and its own VAE); None when the base is not on this machine."""
    base = size_on_disk(registry.base_path(entry))
    if base is None:
        return None
    return base + (size_on_disk(registry.vae_path(entry)) or 0)


@models_app.command("ls")
def list_models(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """List registered models: family, how they are stored, size on disk, LinFusion, whether local."""
    registry = _registry()
    rows = [_row(registry, entry) for entry in registry.entries()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    header = ("NAME", "FAMILY", "NATIVE", "FORMAT", "SIZE", "LINFUSION", "LOCAL")
    table = [header] + [(r["name"], r["family"], str(r["native_size"]), r["format"].replace(" ", "-"),
                         _human_size(r["size_bytes"]).replace(" ", ""), r["linfusion_state"].split(" ")[0],
                         _short_status(r["missing"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    if any(r["linfusion"] == "from_unet" and not r["builtin"] for r in rows):
        typer.echo(f"\n{UNTRAINED_NOTE}.")


@models_app.command("show")
def show_model(
    name: str = typer.Argument(..., help="A registry name (see `linstudio models ls`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Show one model's details: where each part is, its size, identity and what is missing."""
    registry = _registry()
    try:
        entry = registry.get(name)
    except UnknownModelError as exc:
        _fail(str(exc))
    row = _row(registry, entry)
    row["identity"] = registry.identity(entry) if not row["missing"] else None
    row["base_path"] = str(registry.base_path(entry)) if registry.base_path(entry) else None
    if as_json:
        typer.echo(json.dumps(row, indent=2))
        return
    lines = [
        ("name", entry.name + (" (built-in)" if entry.builtin else "")),
        ("description", entry.description or "-"),
        ("family", entry.family),
        ("native size", f"{entry.native_size} px"),
        ("prediction", entry.prediction_type or "the base's own scheduler config"),
        ("sdedit", ", ".join(f"{v:g}" for v in entry.sdedit_strengths) if entry.sdedit_strengths
         else "the published strengths 0.4, 0.3, 0.2, 0.1"),
        ("base", f"{entry.base} ({entry.base_format})"),
        ("on disk", _on_disk(entry, row)),
        ("vae", entry.vae or "the base's own"),
        ("linfusion", f"{linfusion_state(entry)}" + ("" if entry.linfusion in LINFUSION_KEYWORDS
                                                       else f": {entry.linfusion}")),
        ("loras", ", ".join(f"{k}={v}" for k, v in sorted(entry.loras.items())) or "-"),
        ("controlnets", ", ".join(f"{k}={v}" for k, v in sorted(entry.controlnets.items())) or "-"),
        ("ip-adapter", entry.ip_adapter or "-"),
        ("identity", row["identity"] or "- (parts missing)"),
    ]
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        typer.echo(f"{label.ljust(width)}  {value}")
    if entry.linfusion == "from_unet":
        typer.echo(f"\nlinfusion is {UNTRAINED_NOTE}.")
    for problem in row["missing"]:
        typer.echo(f"missing: {problem}")


def _on_disk(entry, row: dict) -> str:
    if row["size_bytes"] is not None:
        return f"{row['base_path']}, {_human_size(row['size_bytes'])}"
    if entry.is_tiny:
        return f"{row['base_path']} (built on first use)"
    return "not on this machine"


def _location(value: str, option: str, keywords: tuple[str, ...] = ()) -> str:
    """A registry location from the command line: a keyword, a path, or an `owner/name` hub id.

    Relative paths are stored absolute (they would mean something else from another working
    directory); `~` is kept so one registry file works for every user. A value that is both an
    existing relative path and hub-id-shaped (`models/foo`) is taken as the path.
    """
    if value in keywords or value.startswith((BUILTIN_PREFIX, "/", "~")):
        return value
    if value.startswith(".") or Path(value).exists():
        return str(Path(value).resolve())
    if HUB_ID_RE.match(value):
        return value
    allowed = ", ".join(("a file or folder path", "an owner/name hub id") + tuple(repr(k) for k in keywords))
    _fail(f"{option} {value!r}: expected {allowed}")


def _local_path(location: str, option: str) -> Path | None:
    """The path of a file/folder location, refusing one that is not there; None for a hub id."""
    if location.startswith(BUILTIN_PREFIX):
        return None
    if location_format(location) == "hub":
        return cached_snapshot(location)
    path = Path(location).expanduser()
    if not path.exists():
        _fail(f"{option} {location}: no such file or folder")
    return path


def _pairs(pairs: list[str], option: str, example: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            _fail(f"{option} {pair!r}: expected NAME=PATH (e.g. {option} {example})")
        if name in found:
            _fail(f"{option} {name!r} given twice")
        found[name] = path
    return found


def _check_base(location: str, family: str | None):
    """What --base is (a `BaseModelCheck`, None for a hub id not in the cache), or a one-line refusal."""
    if family is not None and family not in FAMILIES:
        _fail(f"--family {family!r}: must be one of {', '.join(FAMILIES)}")
    path = _local_path(location, "--base")
    if path is None:  # a hub id not in the local cache: nothing to read, so --family must say
        if family is None:
            _fail(f"--base {location}: not in the local Hugging Face cache, so its family cannot be read; "
                  "give --family sd15, sd21 or sdxl")
        return None
    try:
        return check_base(path, family)
    except FamilyMismatchError as exc:
        _fail(f"--family {exc.given}: {exc.path} is {exc.detected} ({exc.evidence})")
    except CheckpointError as exc:
        _fail(str(exc))


def _base_notes(checked) -> list[str]:
    """The lines `models add` prints under "registered": how the family was told, what was assumed."""
    if checked is None:
        return []
    if checked.family_given:
        return [f"family {checked.family} from --family ({checked.evidence})"]
    return [f"family {checked.family}: {checked.evidence}", *checked.assumptions]


def _check_file_part(location: str, option: str, check) -> None:
    """Refuse a missing or wrong VAE / ControlNet / IP-Adapter / LoRA location in one line."""
    path = _local_path(location, option)
    if path is None:
        return
    try:
        check(path)
    except CheckpointError as exc:
        _fail(f"{option}: {exc}")


@models_app.command("add")
def add_model(
    name: str = typer.Argument(..., help="Registry name manifests will use (letters, digits, '.', '-', '_')."),
    base: str = typer.Option(..., "--base",
                             help="Base model: a single-file checkpoint (.safetensors/.ckpt), a diffusers folder "
                                  "or a cached owner/name hub id."),
    linfusion: str = typer.Option("from_unet", "--linfusion",
                                  help="LinFusion weights: a folder, a cached hub id, 'from_unet' (default: the "
                                       "untrained start) or 'none'."),
    family: str | None = typer.Option(None, "--family",
                                      help="sd15, sd21 or sdxl. Default: read from the checkpoint or folder."),
    vae: str | None = typer.Option(None, "--vae", help="A VAE (file or folder) replacing the base's own."),
    native_size: int | None = typer.Option(None, "--native-size",
                                           help="Side the base was trained at. Default: 512/768/1024 by family."),
    prediction_type: str | None = typer.Option(None, "--prediction-type",
                                               help="epsilon or v_prediction. Default: the checkpoint's own."),
    description: str = typer.Option("", "--description", help="One line shown by `models show`."),
    lora: list[str] = typer.Option([], "--lora", help="NAME=PATH of a LoRA safetensors file; repeatable."),
    controlnet: list[str] = typer.Option([], "--controlnet",
                                         help="KIND=PATH of a ControlNet (file or folder) for control type KIND "
                                              "(canny, depth, ...); repeatable."),
    ip_adapter: str | None = typer.Option(None, "--ip-adapter",
                                          help="An IP-Adapter: a folder (models/ip-adapter*.safetensors and "
                                               "models/image_encoder/) or a weights file with image_encoder/ beside it."),
) -> None:
    """Register (or replace) a studio model in HOME/models.yaml, after checking every file it names."""
    base_location = _location(base, "--base")
    checked = _check_base(base_location, family)
    family = checked.family if checked else family
    notes = _base_notes(checked)
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        _fail(f"--prediction-type {prediction_type!r}: must be one of {', '.join(PREDICTION_TYPES)}")
    size = native_size or (checked and checked.native_size) or NATIVE_SIZES[family]
    if size <= 0 or size % 8:
        _fail(f"--native-size {size}: must be a positive multiple of 8")
    vae_location = _location(vae, "--vae") if vae else None
    if vae_location:
        _check_file_part(vae_location, "--vae", check_vae)
    elif checked is not None and checked.has_vae is False:
        _fail(f"--base {base_location}: the checkpoint has no VAE (no first_stage_model.* keys); give one with --vae PATH")
    loras = {k: _location(v, f"--lora {k}") for k, v in _pairs(lora, "--lora", "ink=/loras/ink.safetensors").items()}
    controlnets = {k: _location(v, f"--controlnet {k}")
                   for k, v in _pairs(controlnet, "--controlnet", "canny=/models/control_canny.safetensors").items()}
    ip_location = _location(ip_adapter, "--ip-adapter") if ip_adapter else None
    linfusion_location = _location(linfusion, "--linfusion", LINFUSION_KEYWORDS)
    for lora_name, location in loras.items():
        _check_file_part(location, f"--lora {lora_name}", check_lora)
    for kind, location in controlnets.items():
        _check_file_part(location, f"--controlnet {kind}", check_controlnet)
    if ip_location:
        _check_file_part(ip_location, "--ip-adapter", check_ip_adapter)

    entry = ModelEntry(
        name=name,
        family=family,  # type: ignore[arg-type]  (checked against FAMILIES)
        base=base_location,
        linfusion=linfusion_location,
        native_size=size,
        description=description,
        loras=loras,
        controlnets=controlnets,
        ip_adapter=ip_location,
        vae=vae_location,
        prediction_type=prediction_type or (checked.prediction_type if checked else None),
    )
    registry = _registry()
    try:
        registry.add(entry)
    except ValueError as exc:
        _fail(str(exc))
    replaced = " (replaces the built-in entry)" if any(e.name == name for e in BUILTIN_ENTRIES) else ""
    typer.echo(f"registered {name!r} ({family}, {entry.base_format}) in {registry.registry_file}{replaced}")
    for note in notes:
        typer.echo(f"  {note}")
    if entry.linfusion == "from_unet":
        typer.echo(f"  linfusion: {UNTRAINED_NOTE}")
    for problem in registry.missing(entry):
        typer.echo(f"warning: {name}: not available locally yet: {problem}", err=True)


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the top-level app."""
    app.add_typer(models_app, name="models")
