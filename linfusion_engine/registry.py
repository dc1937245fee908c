"""The model registry: named base models and the LinFusion weights mounted on them.

Upstream LinFusion maps a handful of hub ids to weights with a hard-coded table and refuses
everything else, local folders included. Studios run their own fine-tunes, so here a model is a
named registry entry instead: built-in entries for the published bases and the tiny models, and a
YAML file under LINSTUDIO_HOME (`models.yaml`) where a studio adds its own with
`linstudio models add`. Entries from the file override built-ins of the same name.

This module must not import torch: manifest validation (which checks registry names and folds
the weights' identity into job keys) answers in about a second.

Where things are
----------------
`base` and `linfusion` are locations:
- `builtin:tiny-sd15` / `builtin:tiny-sdxl`: built deterministically on first use under
  HOME/models by the builder the `linfusion_engine.builtin_models` entry point names (`linfusion_devkit.tiny`);
- `package:NAME`: trained weights shipped inside this package (`linfusion_engine/builtin_models/NAME`,
  e.g. `shapes-sd15`, trained by `toy/train_shapes.py`): nothing to build or download, identified
  like any local model, by the sha256 of its files;
- an absolute or `~` path: a local folder in diffusers layout, or (for `base`) a single-file
  checkpoint (`.safetensors` / `.ckpt`) in the original SD layout, read with the component configs
  the project carries (`linfusion_engine/checkpoints.py`);
- an `owner/name` hub id: looked up in the local Hugging Face cache only, never downloaded;
- `from_unet` (linfusion only): untrained layers built from the UNet's own attn1 weights;
- `none` (linfusion only): never mount LinFusion (softmax only).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import yaml

Family = Literal["sd15", "sd21", "sdxl"]
FAMILIES: tuple[str, ...] = ("sd15", "sd21", "sdxl")
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
BUILTIN_PREFIX = "builtin:"
PACKAGE_PREFIX = "package:"
# Where `package:NAME` locations live: trained weights committed with the code.
PACKAGED_MODELS_DIR = Path(__file__).resolve().parent / "builtin_models"
# Bumped whenever `linfusion_devkit.tiny` changes what it builds, so job keys follow.
TINY_BUILD_VERSION = "1"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


class ModelNotAvailableError(RuntimeError):
    """A registry entry's files are not on this machine. The message says how to provide them."""


class UnknownModelError(KeyError):
    """No registry entry of that name."""

    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence.
        return str(self.args[0])


@dataclass(frozen=True)
class ModelEntry:
    """One named model.

    Args:
        name: the registry name manifests use (`model: sd15`).
        family: sd15, sd21 or sdxl: decides the pipeline class, native size and strategies.
        base: where the base pipeline is (see the module docstring).
        linfusion: which LinFusion weights to mount: a folder, a cached hub id, `from_unet` or `none`.
        native_size: the side in pixels the base model was trained at; `attention: auto` uses
            softmax at and below it and linear above it.
        description: one line for `linstudio models ls`.
        loras: LoRA name -> local safetensors file, for manifests' `lora:` field.
        builtin: True for entries shipped with the code (not written to the registry file).
        controlnets: control-map type (canny, depth...) -> ControlNet location (a folder, a cached
            hub id, or `builtin:` for the tiny models), for manifests' `controlnet:` field.
        ip_adapter: IP-Adapter location for manifests' `ip_adapter:` field: a folder (or cached hub
            id) holding `models/<weights>.safetensors` and `models/image_encoder/`, or one weights
            file with `image_encoder/` beside it; None: none.
        vae: a VAE that replaces the base's own (a single file or a folder); None: the base's.
        prediction_type: `epsilon` or `v_prediction` laid over the base's scheduler config; None:
            the base's own (single files record what was detected or assumed when added).
        sdedit_strengths: the image-to-image strength of each doubling of the `sdedit` chain (the
            last repeats for further doublings); None: the published SD-1.5 ones (0.4, 0.3, 0.2,
            0.1). A fine-tune that redraws edges at the larger stages wants lower ones:
            `shapes-sd15` keeps its shape with 0.25, 0.2 (docs/quality.md).
    """

    name: str
    family: Family
    base: str
    linfusion: str = "from_unet"
    native_size: int = 512
    description: str = ""
    loras: dict[str, str] = field(default_factory=dict)
    builtin: bool = False
    controlnets: dict[str, str] = field(default_factory=dict)
    ip_adapter: str | None = None
    vae: str | None = None
    prediction_type: str | None = None
    sdedit_strengths: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.sdedit_strengths is not None:  # YAML gives a list; the entry is frozen and hashable
            values = self.sdedit_strengths
            if not isinstance(values, (list, tuple)) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise TypeError(f"sdedit_strengths: expected a list of numbers, got {values!r}")
            object.__setattr__(self, "sdedit_strengths", tuple(float(v) for v in values))

    @property
    def is_tiny(self) -> bool:
        return self.base.startswith(BUILTIN_PREFIX)

    @property
    def is_packaged(self) -> bool:
        """True for a base shipped with the code (`package:`), such as the trained `shapes-sd15`."""
        return self.base.startswith(PACKAGE_PREFIX)

    @property
    def is_toy_scale(self) -> bool:
        """A toy-width architecture (a tiny or packaged built-in): the planner's `tiny` cost profile."""
        return self.is_tiny or self.is_packaged

    @property
    def base_format(self) -> str:
        """How the base is stored: `builtin`, `single file`, `folder` or `hub` (a cached hub id)."""
        return location_format(self.base)

    def to_yaml_dict(self) -> dict:
        data = asdict(self)
        data.pop("name")
        data.pop("builtin")
        if not data["loras"]:
            data.pop("loras")
        # Left out when unset, so entries written before conditioning existed keep their identity.
        if not data["controlnets"]:
            data.pop("controlnets")
        if data["ip_adapter"] is None:
            data.pop("ip_adapter")
        for optional in ("vae", "prediction_type", "sdedit_strengths"):  # likewise: older entries keep their identity
            if data[optional] is None:
                data.pop(optional)
        if "sdedit_strengths" in data:
            data["sdedit_strengths"] = list(data["sdedit_strengths"])
        return data


def tiny_conditioning_locations(model: str) -> dict:
    """The `builtin:` conditioning parts of a tiny model (built by `linfusion_devkit.tiny_conditioning` through the entry point)."""
    return {"controlnets": {kind: f"builtin:{model}-controlnet-{kind}" for kind in ("canny", "depth")},
            "ip_adapter": f"builtin:{model}-ip-adapter",
            "loras": {"tiny-style": f"builtin:{model}-lora-tiny-style"}}


BUILTIN_ENTRIES: tuple[ModelEntry, ...] = (
    ModelEntry("sd15", "sd15", "runwayml/stable-diffusion-v1-5", "Yuanshi/LinFusion-1-5", 512,
               "Stable Diffusion 1.5 with the published LinFusion-1-5 weights", builtin=True),
    ModelEntry("sd21", "sd21", "stabilityai/stable-diffusion-2-1", "Yuanshi/LinFusion-2-1", 768,
               "Stable Diffusion 2.1 with the published LinFusion-2-1 weights (use bf16/fp32, not fp16)",
               builtin=True),
    ModelEntry("sdxl", "sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "Yuanshi/LinFusion-XL", 1024,
               "Stable Diffusion XL base 1.0 with the published LinFusion-XL weights", builtin=True),
    ModelEntry("shapes-sd15", "sd15", "package:shapes-sd15", "package:shapes-sd15-linfusion", 128,
               "Small SD-1.5-shaped model trained on the shapes world (toy/): its images can be judged",
               builtin=True, controlnets={"seg": "package:shapes-sd15-controlnet-seg"},
               ip_adapter="package:shapes-sd15-ip-adapter", sdedit_strengths=(0.25, 0.2, 0.15, 0.1)),
    ModelEntry("tiny-sd15", "sd15", "builtin:tiny-sd15", "from_unet", 64,
               "Tiny random-weight SD-1.5-shaped model for demos and tests: makes noise, not art",
               builtin=True, **tiny_conditioning_locations("tiny-sd15")),
    ModelEntry("tiny-sdxl", "sdxl", "builtin:tiny-sdxl", "from_unet", 64,
               "Tiny random-weight SD-XL-shaped model for demos and tests: makes noise, not art",
               builtin=True, **tiny_conditioning_locations("tiny-sdxl")),
)


def hf_cache_dir() -> Path:
    """The local Hugging Face hub cache, honouring HF_HUB_CACHE / HF_HOME like huggingface_hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    return hf_home / "hub"


def cached_snapshot(hub_id: str) -> Path | None:
    """The newest local snapshot folder of a hub repo in the HF cache, or None. Never downloads."""
    repo_dir = hf_cache_dir() / ("models--" + hub_id.replace("/", "--"))
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        snapshot = repo_dir / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    snapshots = sorted((repo_dir / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime) if (
        repo_dir / "snapshots").is_dir() else []
    return snapshots[-1] if snapshots else None


def resolve_location(location: str, models_dir: Path) -> Path | None:
    """Where a `base` or `linfusion` location is on disk now, or None when it is not present."""
    if location.startswith(BUILTIN_PREFIX):
        folder = models_dir / location[len(BUILTIN_PREFIX):] / f"v{TINY_BUILD_VERSION}"
        return folder  # built on first use: always "available"
    if location.startswith(PACKAGE_PREFIX):
        folder = PACKAGED_MODELS_DIR / location[len(PACKAGE_PREFIX):]
        return folder if folder.is_dir() else None
    if location.startswith(("/", "~", ".")):
        path = Path(location).expanduser()
        return path if path.exists() else None
    if HUB_ID_RE.match(location):
        return cached_snapshot(location)
    return None


def is_single_file(location: str) -> bool:
    """True for a path location naming a weights file (a single-file checkpoint, VAE, ControlNet...)."""
    return location.startswith(("/", "~", ".")) and Path(location).suffix.lower() in WEIGHT_SUFFIXES


def location_format(location: str) -> str:
    """`builtin`, `single file`, `folder` or `hub`: how a location is stored, told from its spelling."""
    if location.startswith((BUILTIN_PREFIX, PACKAGE_PREFIX)):
        return "builtin"
    if is_single_file(location):
        return "single file"
    if location.startswith(("/", "~", ".")):
        return "folder"
    return "hub"


def size_on_disk(path: Path | None) -> int | None:
    """Bytes a file or folder holds (symlinks followed, as the HF cache's snapshots are links), or None."""
    if path is None or not path.exists():
        return None
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def how_to_provide(location: str, option: str = "--base") -> str:
    """A sentence telling a user how to make a missing location available offline.

    `option` is the `linstudio models add` option that sets this location (--base, --linfusion).
    """
    if location.startswith(PACKAGE_PREFIX):
        return (f"'{location}' ships with the code at {PACKAGED_MODELS_DIR / location[len(PACKAGE_PREFIX):]}, "
                "which is missing: reinstall linfusion-studio from a complete checkout.")
    if HUB_ID_RE.match(location) and not location.startswith(("/", "~", ".")):
        return (f"'{location}' is not in the local Hugging Face cache ({hf_cache_dir()}). Copy the cache "
                f"from a machine that has it, or run `huggingface-cli download {location}` where the network "
                f"is allowed, or register a local folder with `linstudio models add NAME {option} /path ...`.")
    if is_single_file(location):
        return (f"the file '{location}' does not exist on this machine. Copy it there, or re-register the "
                f"entry with `linstudio models add NAME {option} /path ...`.")
    return (f"the folder '{location}' does not exist on this machine. Copy it there (diffusers folder "
            f"layout), or re-register the entry with `linstudio models add NAME {option} /path ...`.")


def _file_digest(path: Path, cache: dict) -> str:
    """sha256 of a weight file, cached by (path, size, mtime) because real weights are GBs.

    The mtime is taken in nanoseconds: at whole seconds, a same-size file rewritten within the
    second kept its old digest (and so its old identity).
    """
    stat = path.stat()
    key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    if key not in cache:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        cache[key] = digest.hexdigest()
    return cache[key]


class ModelRegistry:
    """Built-in entries merged with the studio's registry file."""

    def __init__(self, registry_file: Path, models_dir: Path) -> None:
        self.registry_file = Path(registry_file)
        self.models_dir = Path(models_dir)
        self._entries: dict[str, ModelEntry] = {e.name: e for e in BUILTIN_ENTRIES}
        self._entries.update(self._read_file())

    @classmethod
    def from_settings(cls, settings) -> "ModelRegistry":
        """The registry the studio's settings name: anything with `registry_file` and `models_dir`
        (the engine takes them as handed in, it does not read settings itself)."""
        return cls(settings.registry_file, settings.models_dir)

    # -- reading and writing the file -------------------------------------------------------
    def _read_file(self) -> dict[str, ModelEntry]:
        if not self.registry_file.is_file():
            return {}
        try:
            raw = yaml.safe_load(self.registry_file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{self.registry_file}: not valid YAML: {exc}") from exc
        models = raw.get("models", {}) if isinstance(raw, dict) else None
        if not isinstance(models, dict):
            raise ValueError(f"{self.registry_file}: expected a mapping under 'models:'")
        entries = {}
        for name, data in models.items():
            if not isinstance(data, dict):
                raise ValueError(f"{self.registry_file}: models.{name}: expected a mapping")
            try:
                entries[name] = ModelEntry(name=name, **data)
            except TypeError as exc:
                raise ValueError(f"{self.registry_file}: models.{name}: {exc}") from exc
            if entries[name].family not in FAMILIES:
                raise ValueError(f"{self.registry_file}: models.{name}.family: must be one of {FAMILIES}")
            if entries[name].prediction_type not in (None, *PREDICTION_TYPES):
                raise ValueError(f"{self.registry_file}: models.{name}.prediction_type: must be one of "
                                 f"{', '.join(PREDICTION_TYPES)}")
            strengths = entries[name].sdedit_strengths
            if strengths is not None and (not strengths or not all(0 < s <= 1 for s in strengths)):
                raise ValueError(f"{self.registry_file}: models.{name}.sdedit_strengths: "
                                 "a list of strengths in (0, 1], one per doubling")
        return entries

    def add(self, entry: ModelEntry) -> None:
        """Register (or replace) a studio entry and write the registry file."""
        if not NAME_RE.match(entry.name):
            raise ValueError(f"model name {entry.name!r}: letters, digits, '.', '-' and '_' only")
        if entry.family not in FAMILIES:
            raise ValueError(f"family {entry.family!r}: must be one of {', '.join(FAMILIES)}")
        studio = self._read_file()
        studio[entry.name] = entry
        self.registry_file.parent.mkdir(parents=True, exist_ok=True)
        body = {"models": {name: e.to_yaml_dict() for name, e in sorted(studio.items())}}
        tmp = self.registry_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(body, sort_keys=False))
        tmp.replace(self.registry_file)
        self._entries[entry.name] = entry

    # -- lookups ------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[ModelEntry]:
        return [self._entries[n] for n in self.names()]

    def get(self, name: str) -> ModelEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownModelError(
                f"unknown model {name!r}; registered: {', '.join(self.names())}") from None

    def base_path(self, entry: ModelEntry) -> Path | None:
        return resolve_location(entry.base, self.models_dir)

    def vae_path(self, entry: ModelEntry) -> Path | None:
        return resolve_location(entry.vae, self.models_dir) if entry.vae else None

    def linfusion_path(self, entry: ModelEntry) -> Path | None:
        if entry.linfusion in ("from_unet", "none"):
            return None
        return resolve_location(entry.linfusion, self.models_dir)

    def conditioning_path(self, location: str) -> Path | None:
        """Where a ControlNet or IP-Adapter location is on disk now (None when absent).

        `builtin:` ones are always "there": they are built on first use. ControlNets and
        IP-Adapters are not part of `missing()`: a model stays usable without them, and a job
        that asks for one that is absent fails with `require_conditioning`'s message.
        """
        return resolve_location(location, self.models_dir)

    def require_conditioning(self, entry: ModelEntry, kind: str, name: str | None = None) -> str:
        """The location of a conditioning part of `entry`, or a clear error.

        Args:
            kind: `controlnet` (with `name` = the control type), `ip_adapter` or `lora` (with `name`).
        Raises ValueError when the entry has no such part, ModelNotAvailableError when its files
        are not on this machine.
        """
        if kind == "controlnet":
            location = entry.controlnets.get(name)
            if location is None:
                listed = ", ".join(sorted(entry.controlnets)) or "none"
                raise ValueError(f"model {entry.name!r} has no ControlNet for control type {name!r} "
                                 f"(its ControlNets: {listed}); add one under controlnets: in the registry")
        elif kind == "ip_adapter":
            location = entry.ip_adapter
            if location is None:
                raise ValueError(f"model {entry.name!r} has no IP-Adapter; set ip_adapter: in its registry entry")
        elif kind == "lora":
            location = entry.loras.get(name)
            if location is None:
                raise ValueError(f"LoRA {name!r} is not registered with model {entry.name!r} "
                                 f"(its LoRAs: {', '.join(sorted(entry.loras)) or 'none'})")
            if location.startswith(BUILTIN_PREFIX) or Path(location).expanduser().is_file():
                return location
            raise ModelNotAvailableError(f"LoRA {name!r} of model {entry.name!r}: the file '{location}' does "
                                         "not exist on this machine.")
        else:
            raise ValueError(f"unknown conditioning kind {kind!r}; use controlnet, ip_adapter or lora")
        if self.conditioning_path(location) is None:
            what = f"ControlNet {name!r}" if kind == "controlnet" else "IP-Adapter"
            raise ModelNotAvailableError(f"{what} of model {entry.name!r}: {how_to_provide(location)}")
        return location

    def missing(self, entry: ModelEntry) -> list[str]:
        """Sentences naming each missing part of an entry (empty when everything is local)."""
        problems = []
        if self.base_path(entry) is None:
            problems.append(f"base model: {how_to_provide(entry.base)}")
        if entry.vae and self.vae_path(entry) is None:
            problems.append(f"VAE: {how_to_provide(entry.vae, '--vae')}")
        if entry.linfusion not in ("from_unet", "none") and self.linfusion_path(entry) is None:
            problems.append(f"LinFusion weights: {how_to_provide(entry.linfusion, '--linfusion')}")
        for lora, path in entry.loras.items():
            if not path.startswith(BUILTIN_PREFIX) and not Path(path).expanduser().is_file():
                problems.append(f"LoRA {lora!r}: the file '{path}' does not exist on this machine.")
        return problems

    def is_available(self, entry: ModelEntry) -> bool:
        return not self.missing(entry)

    def require_available(self, entry: ModelEntry) -> None:
        problems = self.missing(entry)
        if problems:
            raise ModelNotAvailableError(
                f"model {entry.name!r} is not available locally (nothing is downloaded at run time):\n  - "
                + "\n  - ".join(problems))

    def weight_digests(self, entry: ModelEntry) -> dict[str, str]:
        """sha256 of each weight file present for an entry: `base/unet/...`, `linfusion/...`, `lora/NAME`.

        Empty for tiny models (identified by their build version instead). Digests are cached in
        HOME/models/weight-hashes.json by path, size and mtime, so only new or changed files are read.
        """
        if entry.is_tiny:
            return {}
        cache_file = self.models_dir / "weight-hashes.json"
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
        before = dict(cache)
        weights = {}

        # A model shipped with the code is its files, configs included (its VAE's scaling factor
        # lives in a config): a retrained or re-exported `shapes-sd15` gets new job keys.
        counted = (*WEIGHT_SUFFIXES, ".json") if entry.is_packaged else WEIGHT_SUFFIXES

        def add(role: str, location_path: Path | None) -> None:
            """A single file counts under its role alone (renaming or moving it changes nothing);
            a folder's weight files count by their path inside it."""
            if location_path is None:
                return  # absent parts count by location only (an error if used)
            if location_path.is_file():
                weights[role] = _file_digest(location_path.resolve(), cache)
                return
            for path in sorted(location_path.rglob("*")):
                if path.is_file() and path.suffix in counted:
                    weights[f"{role}/{path.relative_to(location_path)}"] = _file_digest(path.resolve(), cache)

        add("base", self.base_path(entry))
        add("vae", self.vae_path(entry))
        add("linfusion", self.linfusion_path(entry))
        for kind, location in sorted(entry.controlnets.items()):
            add(f"controlnet/{kind}", self.conditioning_path(location))
        if entry.ip_adapter is not None:
            add("ip_adapter", self.conditioning_path(entry.ip_adapter))
        for lora, path in sorted(entry.loras.items()):
            lora_path = Path(path).expanduser()
            if lora_path.is_file():
                weights[f"lora/{lora}"] = _file_digest(lora_path.resolve(), cache)
        if cache != before:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1))
            tmp.replace(cache_file)  # atomic: a concurrent reader never sees half a file
        return weights

    def identity(self, entry: ModelEntry) -> str:
        """A stable hash of what this entry renders with: the entry and the hashes of its weights.

        Part of every job key, so that re-pointing `sd15` at new weights re-renders, while an engine
        upgrade does not. A single-file base or VAE counts by its sha256 only, so moving or renaming
        the file (or registering it under another name) re-renders nothing. Tiny models are identified by their deterministic build version; missing
        files contribute their location only (the job fails later with a clear error).
        """
        record: dict = {"entry": entry.to_yaml_dict()}
        # A single file is its contents (its sha256 is in `weights`), wherever it lies on disk.
        for part in ("base", "vae"):
            if record["entry"].get(part) and is_single_file(record["entry"][part]):
                record["entry"][part] = "single file"
        if entry.is_tiny:
            record["tiny_build"] = TINY_BUILD_VERSION
        else:
            record["weights"] = self.weight_digests(entry)
        blob = json.dumps(record, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
