"""`load_manifests`: files and folders in, validated manifests and every error out.

This is the entry point `linstudio validate`, `linstudio plan` and the runner share. It never
raises for a problem in a manifest: each one becomes a `ManifestError` with file, line and key
path, and every file is read to the end so that one run reports everything.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from linfusion_engine.registry import ModelRegistry
from manifests.checks import CheckContext
from manifests.errors import ManifestError, parent_key
from manifests.schema import Manifest
from manifests.validate import validate_document
from manifests.yaml_source import read_yaml_file

SUFFIXES = (".yaml", ".yml")
_ONE_OR_MANY = re.compile(r"\b(controlnet|lora)\[0\]")


def lookup_line(lines: Mapping[str, int], key_path: str) -> int | None:
    """The line of `key_path`, or of the nearest enclosing key that was written down.

    A missing key has no line of its own: the error points at the mapping that lacks it. A list
    written as a single mapping (`controlnet: {...}`) is found under its `[0]` path too.
    """
    path: str | None = key_path
    while path is not None:
        for candidate in (path, _ONE_OR_MANY.sub(r"\1", path)):
            if candidate in lines:
                return lines[candidate]
        path = parent_key(path)
    return None


@dataclass(frozen=True)
class LoadedManifest:
    """A manifest file that passed validation.

    Args:
        path: the file, absolute.
        sha256: of the file's bytes, recorded with the submission that ran it.
        manifest: the validated model.
        lines: key path -> line, for errors found later (unsupported features, run-time problems).
        locations: each file reference as written -> the absolute path or s3:// URI it was checked at.
        shared_roots: the folders outside the manifest's own that its references may point into
            (the settings it was checked with), for a reference `locations` lacks.
        registry: the model registry its model names were checked against; `expand_jobs` asks it
            for the models' identities unless handed another.
    """

    path: Path
    sha256: str
    manifest: Manifest
    lines: Mapping[str, int] = field(default_factory=dict, repr=False)
    locations: Mapping[str, str] = field(default_factory=dict, repr=False)
    shared_roots: tuple[Path, ...] = ()
    registry: object | None = field(default=None, repr=False, compare=False)

    @property
    def folder(self) -> Path:
        """Where the manifest's relative paths start."""
        return self.path.parent

    def line_of(self, key_path: str) -> int | None:
        """The line where `key_path` (or its nearest written parent) is, or None."""
        return lookup_line(self.lines, key_path)

    def error(self, key_path: str, message: str) -> ManifestError:
        """A `ManifestError` at `key_path` of this file, with its line."""
        return ManifestError(self.path, self.line_of(key_path), key_path, message)


@dataclass
class LoadResult:
    """What `load_manifests` found.

    Args:
        manifests: the valid manifests, in file order.
        errors: every error of every file (and of paths that are not manifests).
        files: every manifest file examined, valid or not.
    """

    manifests: list[LoadedManifest] = field(default_factory=list)
    errors: list[ManifestError] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def invalid_files(self) -> list[Path]:
        """Paths with at least one error, in order of first error."""
        return list(dict.fromkeys(e.path for e in self.errors))


def find_manifest_files(paths: Iterable[Path]) -> tuple[list[Path], list[ManifestError]]:
    """Files named directly, plus `*.yaml` / `*.yml` found recursively (sorted) in folders.

    Hidden folders (`.git`, `.cache`) are skipped. A path that does not exist, or a folder without
    manifests, is an error: `validate` on a mistyped folder must not report success.
    """
    files: list[Path] = []
    errors: list[ManifestError] = []
    for given in paths:
        path = Path(given).expanduser()
        if path.is_file():
            files.append(path.absolute())
        elif path.is_dir():
            found = sorted(p.absolute() for p in path.rglob("*")
                           if p.suffix.lower() in SUFFIXES and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                errors.append(ManifestError(path, None, "", "no manifests (*.yaml, *.yml) in this folder"))
            files.extend(found)
        else:
            errors.append(ManifestError(path, None, "", "no such file or folder"))
    return list(dict.fromkeys(files)), errors


def load_manifest(path: Path, ctx: CheckContext) -> tuple[LoadedManifest | None, list[ManifestError]]:
    """Read, parse and validate one file; the manifest is None when there is any error."""
    raw, document = read_yaml_file(path)
    errors = [ManifestError(path, p.line, p.key_path, p.message) for p in document.problems]
    if not document.read:
        return None, errors
    manifest, issues = validate_document(document.data, ctx)
    errors += [ManifestError(path, lookup_line(document.lines, i.key_path), i.key_path, i.message)
               for i in issues]
    errors.sort(key=lambda e: e.line or 0)  # stable: same-line errors keep document order
    if errors or manifest is None:
        return None, errors
    return LoadedManifest(path, hashlib.sha256(raw).hexdigest(), manifest, document.lines, dict(ctx.locations),
                          tuple(Path(root) for root in ctx.shared_roots), ctx.registry), []


def load_manifests(paths: list[Path], *, settings, registry=None) -> LoadResult:
    """Validate every manifest under `paths` (files or folders) and collect every error.

    Args:
        paths: manifest files and folders (searched recursively for *.yaml / *.yml).
        settings: the studio's (shared roots, job limit, and the model registry's file and folder).
        registry: model names are checked against it; default `ModelRegistry.from_settings(settings)`.
    """
    result = LoadResult()
    files, result.errors = find_manifest_files(paths)
    result.files = files
    if registry is None and files:
        try:
            registry = ModelRegistry.from_settings(settings)
        except (ValueError, OSError) as exc:  # a broken models.yaml: say so, check everything else
            message = str(exc).removeprefix(f"{settings.registry_file}: ")
            result.errors.append(ManifestError(settings.registry_file, None, "", f"model registry: {message}"))
    for path in files:
        ctx = CheckContext(folder=path.parent, shared_roots=list(settings.shared_roots), registry=registry,
                           max_jobs=settings.max_jobs_per_manifest)
        loaded, errors = load_manifest(path, ctx)
        result.errors.extend(errors)
        if loaded is not None:
            result.manifests.append(loaded)
    return result
