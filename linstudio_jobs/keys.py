"""The job key format: the one hash that says whether a render already exists.

On the ground floor because two rooms make keys and neither may stand on the other: `manifests`
(a manifest's jobs) and `catalogue` (a re-render of a catalogued render, asked for in the
gallery). Both must hash exactly the same way, or asking twice would render twice.

The key hashes exactly what decides the pixels and whom they are for (KEY_FIELDS, plus the source
render for a re-render) and nothing else: not the engine version, the device, the timings, the
tags or where the manifest lies, so an upgrade or a moved folder does not re-render the catalogue.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

JOB_KEY_VERSION = "linstudio-job-v1"  # bump only when the meaning of a key field changes
KEY_FIELDS: tuple[str, ...] = (
    "team", "project", "asset_id", "prompt", "negative_prompt", "seed", "width", "height",
    "model_identity", "steps", "guidance", "scheduler", "attention", "strategy", "conditioning", "tileable",
)
OPTIONAL_KEY_FIELDS: tuple[str, ...] = ("parent_render_id", "projection")  # hashed only when set

__all__ = ["JOB_KEY_VERSION", "KEY_FIELDS", "OPTIONAL_KEY_FIELDS", "job_key"]  # JobSpec: linstudio_jobs.spec


def job_key(fields: dict) -> str:
    """The canonical job key: sha256 of `linstudio-job-v1` and the sorted-keys JSON of the key fields.

    `fields` must hold exactly KEY_FIELDS (plus OPTIONAL_KEY_FIELDS that are set; None counts as
    absent, so first renders keep their keys). File references in `conditioning` may carry their
    `path`: it is dropped here, only the file's hash counts. Raises ValueError on missing or extra
    fields, so that a field cannot slip into (or out of) keys unnoticed.
    """
    missing = [name for name in KEY_FIELDS if name not in fields]
    extra = [name for name in fields if name not in KEY_FIELDS and name not in OPTIONAL_KEY_FIELDS]
    if missing or extra:
        raise ValueError(f"job_key: missing fields {missing}, unexpected fields {extra}")
    body = {name: value for name, value in fields.items() if not (name in OPTIONAL_KEY_FIELDS and value is None)}
    body["conditioning"] = _without_paths(body["conditioning"])
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(f"{JOB_KEY_VERSION}\n{text}".encode()).hexdigest()


def _without_paths(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if k != "path"}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    return value
