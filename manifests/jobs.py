"""A manifest expands into render jobs, one per asset x size x seed, each with a stable key.

The job key decides whether a render already exists in the catalogue. It hashes exactly what
decides the pixels and whom they are for — team, project, asset id, prompts, seed, size, the model
registry entry with the hashes of its weights, steps, guidance, scheduler, attention mode,
strategy, every conditioning input's settings and file hash, tileable, and for a re-render the
render it derives from — and nothing else: not the engine version, the device, the timings, the
tags or where the manifest lies, so an upgrade or a moved folder does not re-render the catalogue.
"""

from __future__ import annotations

from typing import Any

from linstudio_jobs import JOB_KEY_VERSION, KEY_FIELDS, OPTIONAL_KEY_FIELDS, JobSpec, job_key  # noqa: F401 (re-exported)
from manifests.load import LoadedManifest
from manifests.paths import file_sha256, resolve_reference
from manifests.schema import ResolvedAsset, resolve_asset


def expand_jobs(loaded: LoadedManifest, registry=None) -> list[JobSpec]:
    """The render jobs of a validated manifest: for each asset, each size, each seed (in that order).

    `registry` names the models' identities (part of each job key); default: the registry the
    manifest was checked against (`loaded.registry`)."""
    registry = registry if registry is not None else loaded.registry
    if registry is None:
        raise ValueError(f"{loaded.path}: expanding jobs needs the model registry it was checked against")
    manifest = loaded.manifest
    identities: dict[str, str] = {}
    jobs: list[JobSpec] = []
    for index, asset in enumerate(manifest.assets):
        resolved = resolve_asset(manifest.defaults, asset, index)
        if resolved.model not in identities:
            identities[resolved.model] = registry.identity(registry.get(resolved.model))
        conditioning = _conditioning(resolved, loaded)
        for width, height in resolved.sizes:
            for seed in resolved.seeds:
                jobs.append(JobSpec(
                    team=manifest.team, project=manifest.project, asset_id=resolved.id, prompt=resolved.prompt,
                    negative_prompt=resolved.negative_prompt, seed=seed, width=width, height=height,
                    model_identity=identities[resolved.model], steps=resolved.steps, guidance=resolved.guidance,
                    scheduler=resolved.scheduler, attention=resolved.attention, strategy=resolved.strategy,
                    conditioning=conditioning, tileable=resolved.tileable, projection=resolved.projection,
                    model=resolved.model,
                    tags=tuple(resolved.tags), manifest_path=str(loaded.path),
                    manifest_line=loaded.line_of(f"assets[{index}]")))
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
