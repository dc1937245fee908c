"""A manifest expands into render jobs, one per asset x size x seed, each with a stable key.

The job key decides whether a render already exists in the catalogue. It hashes exactly what
decides the pixels and whom they are for — team, project, asset id, prompts, seed, size, the model
registry entry with the hashes of its weights, steps, guidance, scheduler, attention mode,
strategy, every conditioning input's settings and file hash, tileable, and for a re-render the
render it derives from — and nothing else: not the engine version, the device, the timings, the
tags or where the manifest lies, so an upgrade or a moved folder does not re-render the catalogue.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from linstudio_jobkeys import JOB_KEY_VERSION, KEY_FIELDS, OPTIONAL_KEY_FIELDS, job_key  # noqa: F401 (re-exported)
from manifests.load import LoadedManifest
from manifests.paths import file_sha256, resolve_reference
from manifests.schema import ResolvedAsset, resolve_asset

@dataclass(frozen=True)
class RenderJob:
    """One render: an asset at one size with one seed, with everything decided.

    Args:
        key: full hex sha256 from `job_key` over the key fields.
        model: the registry name (for people and for loading); `model_identity` is what the key holds.
        conditioning: JSON-able `{controlnet: [...], ip_adapter: {...}, init_image: {...}, lora: [...]}`,
            present entries only; every file is `{path, sha256, hashed}` where `hashed` is `bytes`,
            or `uri` for s3:// inputs (not fetched at planning time, so their URI is hashed).
            LoRA entries carry name and scale: their weights are hashed in `model_identity`.
        tags, manifest_path, manifest_line: for the catalogue and for errors; not in the key.
    """

    key: str
    team: str
    project: str
    asset_id: str
    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    model: str
    model_identity: str
    steps: int
    guidance: float
    scheduler: str
    attention: str
    strategy: str
    tileable: bool | str
    tags: tuple[str, ...]
    conditioning: dict
    parent_render_id: str | None
    manifest_path: str
    manifest_line: int | None

    def __hash__(self) -> int:  # `conditioning` is a dict: hash by the key, which covers it
        return hash(self.key)

    def key_fields(self) -> dict:
        """Exactly the fields the key hashes (with `parent_render_id` for a re-render)."""
        fields = {name: getattr(self, name) for name in KEY_FIELDS}
        if self.parent_render_id is not None:
            fields["parent_render_id"] = self.parent_render_id
        return fields

    def to_record(self) -> dict:
        """All fields as JSON-serialisable data (what the catalogue stores with the job)."""
        record = dataclasses.asdict(self)
        record["tags"] = list(self.tags)
        return record

    def derived(self, parent_render_id: str, **changes: Any) -> "RenderJob":
        """A re-render of this job (e.g. the same asset at 8K from this 2K render): new key, parent recorded."""
        job = dataclasses.replace(self, parent_render_id=parent_render_id, **changes)
        return dataclasses.replace(job, key=job_key(job.key_fields()))


def expand_jobs(loaded: LoadedManifest, registry=None) -> list[RenderJob]:
    """The render jobs of a validated manifest: for each asset, each size, each seed (in that order).

    `registry` names the models' identities (part of each job key); default: the registry the
    manifest was checked against (`loaded.registry`)."""
    registry = registry if registry is not None else loaded.registry
    if registry is None:
        raise ValueError(f"{loaded.path}: expanding jobs needs the model registry it was checked against")
    manifest = loaded.manifest
    identities: dict[str, str] = {}
    jobs: list[RenderJob] = []
    for index, asset in enumerate(manifest.assets):
        resolved = resolve_asset(manifest.defaults, asset, index)
        if resolved.model not in identities:
            identities[resolved.model] = registry.identity(registry.get(resolved.model))
        conditioning = _conditioning(resolved, loaded)
        for width, height in resolved.sizes:
            for seed in resolved.seeds:
                fields = {
                    "team": manifest.team, "project": manifest.project, "asset_id": resolved.id,
                    "prompt": resolved.prompt, "negative_prompt": resolved.negative_prompt, "seed": seed,
                    "width": width, "height": height, "model_identity": identities[resolved.model],
                    "steps": resolved.steps, "guidance": resolved.guidance, "scheduler": resolved.scheduler,
                    "attention": resolved.attention, "strategy": resolved.strategy,
                    "conditioning": conditioning, "tileable": resolved.tileable,
                }
                jobs.append(RenderJob(
                    key=job_key(fields), model=resolved.model, tags=resolved.tags, parent_render_id=None,
                    manifest_path=str(loaded.path), manifest_line=loaded.line_of(f"assets[{index}]"), **fields))
    return jobs


def _conditioning(resolved: ResolvedAsset, loaded: LoadedManifest) -> dict:
    """Settings and file hashes of every conditioning input of an asset (absent ones left out)."""
    def file(reference: str) -> dict:
        location = loaded.locations.get(reference)
        if location is None:  # a LoadedManifest built by hand: apply the same policy now
            location = resolve_reference(reference, loaded.folder, list(loaded.shared_roots))
        digest, hashed = file_sha256(location)
        return {"path": location, "sha256": digest, "hashed": hashed}

    conditioning: dict[str, Any] = {}
    if resolved.controlnet:
        conditioning["controlnet"] = [{"type": c.type, "scale": c.scale, "image": file(c.image)}
                                      for c in resolved.controlnet]
    if resolved.ip_adapter is not None:
        conditioning["ip_adapter"] = {"scale": resolved.ip_adapter.scale,
                                      "images": [file(image) for image in resolved.ip_adapter.images]}
    if resolved.init_image is not None:
        init = resolved.init_image
        conditioning["init_image"] = {"strength": init.strength, "image": file(init.image),
                                      "mask": file(init.mask) if init.mask is not None else None}
    if resolved.lora:
        conditioning["lora"] = [{"name": lora.name, "scale": lora.scale} for lora in resolved.lora]
    return conditioning
