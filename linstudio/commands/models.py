"""`linstudio models`: list the model registry and register a studio's own fine-tunes.

Neither command imports torch: they read and write the registry file only, so they answer at
once. Errors print one line and exit with code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import typer

models_app = typer.Typer(
    name="models",
    help="List and register base models and their LinFusion weights.",
    no_args_is_help=True,
)

# The side each family was trained at, for `models add` without --native-size.
NATIVE_SIZES = {"sd15": 512, "sd21": 768, "sdxl": 1024}
LINFUSION_KEYWORDS = ("from_unet", "none")


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _registry():
    from linfusion_engine.registry import ModelRegistry

    try:
        return ModelRegistry.from_settings()
    except ValueError as exc:  # a broken registry file: say which and where, in one line
        _fail(str(exc).replace("\n", " "))


def _short_status(problems: list[str]) -> str:
    """'yes', or 'missing: base, linfusion' — the table's column; --json carries the sentences."""
    if not problems:
        return "yes"
    parts = [problem.split(":", 1)[0].replace("base model", "base").replace("LinFusion weights", "linfusion")
             for problem in problems]
    return "missing: " + ", ".join(parts)


@models_app.command("ls")
def list_models(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """List registered models and whether their files are on this machine."""
    registry = _registry()
    rows = []
    for entry in registry.entries():
        problems = registry.missing(entry)
        rows.append({
            "name": entry.name,
            "family": entry.family,
            "native_size": entry.native_size,
            "base": entry.base,
            "linfusion": entry.linfusion,
            "loras": dict(entry.loras),
            "builtin": entry.builtin,
            "available": not problems,
            "missing": problems,
            "description": entry.description,
        })
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    header = ("NAME", "FAMILY", "NATIVE", "BASE", "LINFUSION", "LOCAL")
    table = [header] + [(r["name"], r["family"], str(r["native_size"]), r["base"], r["linfusion"],
                         _short_status(r["missing"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


def _location(value: str, option: str, keywords: tuple[str, ...] = ()) -> str:
    """A registry location from the command line: a keyword, a folder, or an `owner/name` hub id.

    Relative folders are stored absolute (they would mean something else from another working
    directory); `~` is kept so one registry file works for every user. A value that is both an
    existing relative folder and hub-id-shaped (`models/foo`) is taken as the folder.
    """
    from linfusion_engine.registry import BUILTIN_PREFIX, HUB_ID_RE

    if value in keywords or value.startswith((BUILTIN_PREFIX, "/", "~")):
        return value
    if value.startswith(".") or Path(value).exists():
        return str(Path(value).resolve())
    if HUB_ID_RE.match(value):
        return value
    allowed = ", ".join(("a folder path", "an owner/name hub id") + tuple(repr(k) for k in keywords))
    _fail(f"{option} {value!r}: expected {allowed}")


def _loras(pairs: list[str]) -> dict[str, str]:
    loras: dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            _fail(f"--lora {pair!r}: expected NAME=PATH (e.g. --lora ink=/loras/ink.safetensors)")
        if name in loras:
            _fail(f"--lora {name!r} given twice")
        loras[name] = path if path.startswith(("/", "~")) else str(Path(path).resolve())
    return loras


@models_app.command("add")
def add_model(
    name: str = typer.Argument(..., help="Registry name manifests will use (letters, digits, '.', '-', '_')."),
    base: str = typer.Option(..., "--base", help="Base pipeline: a diffusers folder or a cached owner/name hub id."),
    linfusion: str = typer.Option(..., "--linfusion",
                                  help="LinFusion weights: a folder, a cached hub id, 'from_unet' or 'none'."),
    family: str = typer.Option(..., "--family", help="sd15, sd21 or sdxl."),
    native_size: int | None = typer.Option(None, "--native-size",
                                           help="Side the base was trained at. Default: 512/768/1024 by family."),
    description: str = typer.Option("", "--description", help="One line shown by `models ls`."),
    lora: list[str] = typer.Option([], "--lora", help="NAME=PATH of a LoRA safetensors file; repeatable."),
) -> None:
    """Register (or replace) a studio model in HOME/models.yaml. Missing files only warn."""
    from linfusion_engine.registry import BUILTIN_ENTRIES, FAMILIES, ModelEntry

    if family not in FAMILIES:
        _fail(f"--family {family!r}: must be one of {', '.join(FAMILIES)}")
    size = NATIVE_SIZES[family] if native_size is None else native_size
    if size <= 0 or size % 8:
        _fail(f"--native-size {size}: must be a positive multiple of 8")
    entry = ModelEntry(
        name=name,
        family=family,  # type: ignore[arg-type]  (checked against FAMILIES above)
        base=_location(base, "--base"),
        linfusion=_location(linfusion, "--linfusion", LINFUSION_KEYWORDS),
        native_size=size,
        description=description,
        loras=_loras(lora),
    )
    registry = _registry()
    try:
        registry.add(entry)
    except ValueError as exc:
        _fail(str(exc))
    replaced = " (replaces the built-in entry)" if any(e.name == name for e in BUILTIN_ENTRIES) else ""
    typer.echo(f"registered {name!r} in {registry.registry_file}{replaced}")
    for problem in registry.missing(entry):
        typer.echo(f"warning: {name}: not available locally yet: {problem}", err=True)


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the top-level app."""
    app.add_typer(models_app, name="models")
