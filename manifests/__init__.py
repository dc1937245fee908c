"""The manifest format teams write (version 1): loading, validation, job expansion and keys.

Public API (what the CLI and the runner use):
- `load_manifests(paths) -> LoadResult` (`.manifests`, `.errors`, `.files`): validate files and folders.
- `LoadedManifest`: `.path`, `.sha256`, `.manifest`, `.line_of(key_path)`.
- `ManifestError`: `.path`, `.line`, `.key_path`, `.message`; str() is `file:line key: message`.
- `expand_jobs(loaded, registry=None) -> list[JobSpec]` (`linstudio_jobs.JobSpec`), `job_key(fields) -> str`.
- `Manifest` and `manifest_json_schema()`.

Nothing here imports torch or diffusers: `linstudio validate` answers in about a second.
"""

from manifests.errors import ManifestError
from manifests.jobs import KEY_FIELDS, JobSpec, expand_jobs, job_key
from manifests.load import LoadedManifest, LoadResult, load_manifests
from manifests.schema import Manifest, manifest_json_schema

__all__ = [
    "KEY_FIELDS", "LoadResult", "LoadedManifest", "Manifest", "ManifestError", "JobSpec", "expand_jobs",
    "job_key", "load_manifests", "manifest_json_schema",
]
