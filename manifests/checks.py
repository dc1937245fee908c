"""Rules that need more than one value, or the world outside the manifest file.

The schema (`manifests.schema`) checks each value alone. Here: seeds and variants together,
duplicates, settings that must come from the asset or defaults, registry names, files on disk
and the job count. Each rule returns `Issue`s naming the key path of the value at fault — where
it was written, so that a bad `defaults.model` is one error, not one per asset.

The rules run on whatever parts of a manifest were valid on their own, so that one bad size does
not hide a missing control map elsewhere in the file: all errors come in one round.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from linfusion_engine.capabilities import PROJECTION_TILEABLE, projection_problem
from manifests.paths import PathRefused, check_image, resolve_reference
from manifests.schema import Asset, AssetFields, Defaults, missing_settings, resolve_asset


@dataclass(frozen=True)
class Issue:
    """A problem at a key path, before it is given a file and a line."""

    key_path: str
    message: str


@dataclass
class CheckContext:
    """What the rules need to know beyond the manifest.

    Args:
        folder: the manifest's folder; relative paths start here.
        shared_roots: allow-listed folders for absolute paths.
        registry: the model registry, or None when it could not be read (model checks are skipped).
        max_jobs: the most jobs one manifest may expand to.
        locations: filled in by the file rules: reference as written -> absolute path or s3:// URI.
    """

    folder: Path
    shared_roots: list[Path] = field(default_factory=list)
    registry: object | None = None
    max_jobs: int = 5000
    locations: dict[str, str] = field(default_factory=dict)


def closest(word: object, choices: list[str] | tuple[str, ...]) -> str | None:
    """The choice most like `word` (difflib ratio at least 0.6; ties go to the longer common prefix)."""
    word = str(word)
    best: tuple[float, int, str] | None = None
    for choice in choices:
        ratio = difflib.SequenceMatcher(None, word, choice).ratio()
        prefix = len(os.path.commonprefix([word, choice]))
        if ratio >= 0.6 and (best is None or (ratio, prefix) > best[:2]):
            best = (ratio, prefix, choice)
    return best[2] if best else None


def did_you_mean(word: object, choices: list[str] | tuple[str, ...]) -> str:
    """`; did you mean 'defaults'?` when a choice is close to `word`, else an empty string."""
    match = closest(word, [str(c) for c in choices])
    return f"; did you mean {match!r}?" if match else ""


def check_parts(defaults: Defaults | None, assets: list[tuple[int, Asset]], ctx: CheckContext,
                complete: bool, invalid: set[str] | frozenset[str] = frozenset()) -> list[Issue]:
    """Every cross-value and outside-world rule over the valid parts of one manifest.

    Args:
        defaults: the validated `defaults`, or None when they were invalid (rules that depend on
            them are skipped rather than guessed).
        assets: (index, asset) for each asset that was valid on its own.
        complete: True when the whole manifest was valid (the job count needs every asset).
        invalid: key paths of settings that were given but invalid (`assets[2].model`): they are
            not "missing", and rules that would need their value are skipped for that asset. A
            mapping's own path (`assets[2]`, `defaults`) means it has unknown keys: nothing in it
            is called missing.
    """
    issues: list[Issue] = []
    sections: list[tuple[str, AssetFields]] = [(f"assets[{i}]", asset) for i, asset in assets]
    if defaults is not None:
        sections.insert(0, ("defaults", defaults))
    for prefix, fields in sections:
        issues += _seed_rules(prefix, fields)
        issues += _duplicate_sizes(prefix, fields)
        issues += _model_rule(prefix, fields, ctx)
        issues += _file_rules(prefix, fields, ctx)
    issues += _duplicate_ids(assets)
    if defaults is not None:
        issues += _resolved_rules(defaults, assets, ctx, invalid)
        if complete:
            issues += _job_count(defaults, assets, ctx)
    return _unique(issues)


def _unique(issues: list[Issue]) -> list[Issue]:
    seen: set[Issue] = set()
    return [i for i in issues if not (i in seen or seen.add(i))]


def _seed_rules(prefix: str, fields: AssetFields) -> list[Issue]:
    issues = []
    if fields.seeds is not None and fields.variants is not None:
        issues.append(Issue(f"{prefix}.variants", "give seeds or variants, not both"))
    for index, seed in enumerate(fields.seeds or []):
        if seed in (fields.seeds or [])[:index]:
            issues.append(Issue(f"{prefix}.seeds[{index}]", f"seed {seed} is listed twice"))
    return issues


def _duplicate_sizes(prefix: str, fields: AssetFields) -> list[Issue]:
    sizes = fields.sizes or []
    return [Issue(f"{prefix}.sizes[{i}]", f"size {size} is listed twice")
            for i, size in enumerate(sizes) if size in sizes[:i]]


def _duplicate_ids(assets: list[tuple[int, Asset]]) -> list[Issue]:
    first: dict[str, int] = {}
    issues = []
    for index, asset in assets:
        if not asset.id:  # invalid: reported by the schema
            continue
        if asset.id in first:
            issues.append(Issue(f"assets[{index}].id",
                                f"duplicate asset id {asset.id!r} (also assets[{first[asset.id]}].id)"))
        else:
            first[asset.id] = index
    return issues


def _model_rule(prefix: str, fields: AssetFields, ctx: CheckContext) -> list[Issue]:
    if fields.model is None or ctx.registry is None:
        return []
    names = ctx.registry.names()
    if fields.model in names:
        return []
    match = closest(fields.model, names)
    hint = f"; did you mean {match!r}?" if match else ""
    return [Issue(f"{prefix}.model", f"unknown model {fields.model!r}; registered: {', '.join(names)}{hint}")]


def file_references(prefix: str, fields: AssetFields) -> Iterator[tuple[str, str]]:
    """(key path, reference) of every file an asset or defaults names, in document order."""
    for i, control in enumerate(fields.controlnet or []):
        yield f"{prefix}.controlnet[{i}].image", control.image
    if fields.ip_adapter is not None:
        for i, image in enumerate(fields.ip_adapter.images):
            yield f"{prefix}.ip_adapter.images[{i}]", image
    if fields.init_image is not None:
        yield f"{prefix}.init_image.image", fields.init_image.image
        if fields.init_image.mask is not None:
            yield f"{prefix}.init_image.mask", fields.init_image.mask


def _file_rules(prefix: str, fields: AssetFields, ctx: CheckContext) -> list[Issue]:
    issues = []
    for key_path, reference in file_references(prefix, fields):
        try:
            location = resolve_reference(reference, ctx.folder, ctx.shared_roots)
            check_image(location, reference)
        except PathRefused as refused:
            issues.append(Issue(key_path, str(refused)))
        else:
            ctx.locations[reference] = location
    return issues


def _resolved_rules(defaults: Defaults, assets: list[tuple[int, Asset]], ctx: CheckContext,
                    invalid: set[str] | frozenset[str]) -> list[Issue]:
    """Rules on the settings an asset ends up with: required settings, the strategy and LoRAs its model has."""
    issues = []
    for index, asset in assets:
        prefix = f"assets[{index}]"
        missing = missing_settings(defaults, asset)
        for name in missing:
            doubtful = {prefix, "defaults", f"{prefix}.{name}", f"defaults.{name}"} & set(invalid)
            if not doubtful:
                issues.append(Issue(prefix, f"no {name}; give `{name}:` on the asset or in defaults"))
        if missing or _unsure("model", prefix, invalid) or ctx.registry is None:
            continue
        resolved = resolve_asset(defaults, asset, index)
        issues.extend(_projection_rules(resolved, invalid))
        if resolved.model not in ctx.registry.names():
            continue
        family = ctx.registry.get(resolved.model).family
        if resolved.strategy == "highres" and family != "sdxl" and not _unsure("strategy", prefix, invalid):
            # The engine's planner refuses it at render time (linfusion_engine.planner.choose_strategy).
            issues.append(Issue(resolved.origin["strategy"], f"strategy 'highres' is the SD-XL recipe; model "
                                f"{resolved.model!r} is {family}: use sdedit (or auto)"))
        if not resolved.lora or _unsure("lora", prefix, invalid):
            continue
        known = sorted(ctx.registry.get(resolved.model).loras)
        for k, lora in enumerate(resolved.lora):
            if lora.name not in known:
                where = f"{resolved.origin['lora']}[{k}].name"
                listed = ", ".join(known) if known else "none"
                issues.append(Issue(where, f"LoRA {lora.name!r} is not registered with model {resolved.model!r}"
                                           f"{did_you_mean(lora.name, known)} (its LoRAs: {listed})"))
    return issues


def _projection_rules(resolved, invalid: set[str] | frozenset[str]) -> list[Issue]:
    """A projection's sizes (2:1 for equirectangular) and the tileable it implies, at the field that set it."""
    prefix = f"assets[{resolved.index}]"
    if resolved.projection is None or _unsure("projection", prefix, invalid):
        return []
    where = resolved.origin["projection"]
    issues = [Issue(where, f"projection {resolved.projection}: {problem} (in sizes)")
              for problem in dict.fromkeys(projection_problem(resolved.projection, w, h) for w, h in resolved.sizes)
              if problem is not None]
    implied = PROJECTION_TILEABLE[resolved.projection]
    if resolved.tileable != implied and not _unsure("tileable", prefix, invalid):
        issues.append(Issue(resolved.origin["tileable"], f"tileable {str(resolved.tileable).lower()}: projection "
                                                         f"{resolved.projection} wraps on {implied} only; give "
                                                         f"tileable: {implied} or leave it out"))
    return issues


def _unsure(name: str, prefix: str, invalid: set[str] | frozenset[str]) -> bool:
    """Setting `name` was given but invalid on the asset or in defaults: its resolved value is a guess."""
    return any(f"{where}.{name}" in invalid for where in (prefix, "defaults"))


def _job_count(defaults: Defaults, assets: list[tuple[int, Asset]], ctx: CheckContext) -> list[Issue]:
    total = 0
    for index, asset in assets:
        if missing_settings(defaults, asset):
            return []
        resolved = resolve_asset(defaults, asset, index)
        total += len(resolved.sizes) * len(resolved.seeds)
    if total > ctx.max_jobs:
        return [Issue("assets", f"the manifest expands to {total} render jobs; the limit is {ctx.max_jobs} "
                                "(LINSTUDIO_MAX_JOBS_PER_MANIFEST): split it or raise the limit")]
    return []
