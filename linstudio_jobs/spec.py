"""`JobSpec`: everything that decides one render's pixels and whom they are for, typed, with its key.

Every room passes this one record: `manifests` builds it from an asset, the catalogue stores it
(`to_record`) and loads it back (`from_record`), a re-render derives it (`derived`), ingest and the
PNG metadata read its attributes, and `flows.rendering.render_request` maps it to the engine's
`RenderRequest`. Before it, the job was a dict read by string key in eight files, and a field
that changed pixels had to be threaded through each of them by hand.

Each field says what it is in its metadata (`role`):
- `key`: hashed into the job key and, unless it only says whom the render is for, sent to the
  engine (`pixels=True`); `tests/jobs/test_jobspec.py` enumerates the `pixels` fields and fails
  if one of them does not reach `RenderRequest`.
- `key_when_set`: hashed only when it differs from its default (`parent_render_id` today). A
  field added later that changes pixels is added this way, so the keys of every render made
  before it stay what they were.
- `about`: for the catalogue and for errors only (tags, where the manifest lies).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from linfusion_engine.capabilities import check_size
from linstudio_jobs.keys import KEY_FIELDS, OPTIONAL_KEY_FIELDS, job_key

# The serialisation version `to_record` writes. Version 1 records (before the typed spec) have no
# `spec_version`; `from_record` reads every version, filling what an older one lacks.
SPEC_VERSION = 2


def _key(*, pixels: bool = True, **default: Any) -> Any:
    """A field hashed into the job key; `pixels`: the engine must receive it. `default` or
    `default_factory` only for fields that version-1 records may lack."""
    return field(**default, metadata={"role": "key", "pixels": pixels})


def _key_when_set(default: Any, *, pixels: bool = True) -> Any:
    """A field hashed only when it is not `default`, so older renders keep their keys."""
    return field(default=default, metadata={"role": "key_when_set", "pixels": pixels})


def _about(default: Any) -> Any:
    """A field for people and the catalogue, never hashed."""
    return field(default=default, metadata={"role": "about", "pixels": False})


@dataclass(frozen=True)
class JobSpec:
    """One render: an asset at one size with one seed, with everything decided.

    Args:
        team, project, asset_id: whom the render is for (in the key, not sent to the engine).
        prompt ... tileable: what the engine draws (see `linfusion_engine.RenderRequest`).
        model: the registry name (for loading); `model_identity` is what the key holds, so
            re-pointing a name at new weights re-renders and renaming it does not.
        conditioning: JSON-able `{controlnet: [...], ip_adapter: {...}, init_image: {...},
            lora: [...], source_render: {...}}`, present entries only. Every file is
            `{path, sha256, hashed}` (`hashed`: `bytes`), or `uri` for an s3:// input; the key
            drops `path`, so moving a file re-renders nothing.
        parent_render_id: the render a re-render starts from (None: a first render).
        tags, manifest_path, manifest_line: for the catalogue and for errors; not in the key.
        schedule: the schedule that planned this re-render (catalogue.schedules); not in the key,
            so a scheduled re-render and the same one asked for by hand are one job.

    Raises ValueError when the size breaks the engine's size rule (`capabilities.size_problem`).
    """

    team: str = _key(pixels=False)
    project: str = _key(pixels=False)
    asset_id: str = _key(pixels=False)
    prompt: str = _key()
    negative_prompt: str = _key()
    seed: int = _key()
    width: int = _key()
    height: int = _key()
    model_identity: str = _key(pixels=False)  # the engine gets the model by `model`, the key by identity
    steps: int = _key()
    guidance: float = _key()
    scheduler: str = _key()
    attention: str = _key()
    strategy: str = _key(default="auto")
    conditioning: Mapping = _key(default_factory=dict)
    tileable: bool | str = _key(default=False)
    model: str = _about(default="")
    parent_render_id: str | None = _key_when_set(None, pixels=False)  # the source arrives in `conditioning`
    # How the image is meant to be seen (capabilities.PROJECTIONS): the engine draws it through the
    # `tileable` it implies; added after version 1, so hashed only when set.
    projection: str | None = _key_when_set(None, pixels=False)
    tags: tuple[str, ...] = _about(default=())
    manifest_path: str = _about(default="")
    manifest_line: int | None = _about(default=None)
    schedule: str | None = _about(default=None)  # the schedule whose run planned this re-render

    def __post_init__(self) -> None:
        check_size(self.width, self.height)
        if not isinstance(self.tags, tuple):  # a stored record holds a list
            object.__setattr__(self, "tags", tuple(self.tags))

    def __hash__(self) -> int:  # `conditioning` is a dict: hash by the key, which covers it
        return hash(self.key)

    @functools.cached_property
    def key(self) -> str:
        """Full hex sha256 from `job_key` over `key_fields()`."""
        return job_key(self.key_fields())

    def key_fields(self) -> dict:
        """Exactly the fields the key hashes: every `key` field, and `key_when_set` ones that are set."""
        fields = {}
        for spec_field in dataclasses.fields(self):
            role = spec_field.metadata.get("role")
            value = getattr(self, spec_field.name)
            if role == "key" or (role == "key_when_set" and value != spec_field.default):
                fields[spec_field.name] = value
        return fields

    def to_record(self) -> dict:
        """All fields and the key as JSON-able data: what the catalogue stores with the job."""
        record = {"key": self.key, "spec_version": SPEC_VERSION}
        for spec_field in dataclasses.fields(self):
            record[spec_field.name] = getattr(self, spec_field.name)
        record["tags"] = list(self.tags)
        record["conditioning"] = dict(self.conditioning)
        return record

    @classmethod
    def from_record(cls, record: Mapping) -> JobSpec:
        """The spec a stored record describes, whatever version wrote it.

        Fields the record lacks take their defaults (a record written before a field existed), and
        what a record holds beyond the spec (`engine`, `timings`, the stored `key`) is ignored.
        Raises ValueError naming the missing fields when a required one is absent.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in record]
        if missing:
            raise ValueError(f"job record lacks {missing}")
        values = {name: value for name, value in record.items() if name in names}
        if values.get("conditioning") is None:
            values["conditioning"] = {}
        if values.get("tags") is None:
            values["tags"] = ()
        return cls(**values)

    def derived(self, parent_render_id: str, **changes: Any) -> JobSpec:
        """A re-render of this job (e.g. the same asset at 8K from this 2K render): new key, parent recorded."""
        return dataclasses.replace(self, parent_render_id=parent_render_id, **changes)


def pixel_fields() -> tuple[str, ...]:
    """The fields the engine must receive: every hashed field that decides what is drawn."""
    return tuple(f.name for f in dataclasses.fields(JobSpec) if f.metadata.get("pixels"))


def _check_key_fields_agree() -> None:
    """The key format's field lists and the spec's roles are one list, written twice only as a
    guard: `linstudio_jobs.keys` may not import this module (it is the lower of the two)."""
    always = tuple(f.name for f in dataclasses.fields(JobSpec) if f.metadata.get("role") == "key")
    when_set = tuple(f.name for f in dataclasses.fields(JobSpec) if f.metadata.get("role") == "key_when_set")
    if set(always) != set(KEY_FIELDS) or set(when_set) != set(OPTIONAL_KEY_FIELDS):
        raise ImportError(f"linstudio_jobs: JobSpec's key fields {always} + {when_set} disagree with "
                          f"KEY_FIELDS {KEY_FIELDS} + {OPTIONAL_KEY_FIELDS}")


_check_key_fields_agree()
