"""What an ingest writes: the PNG with its settings embedded, the thumbnail, their keys, the row.

The protocol that writes them safely (intent, upload, one transaction) lives in
`catalogue.api.Catalogue.ingest`; this module prepares the pieces and inserts the row.

Object keys are `renders/{team}/{project}/{asset}/{job_key[:16]}-{sha256[:12]}.png` (and
`thumbs/... .webp`): deterministic from the job *and the bytes*. Retrying an upload of the same
bytes overwrites the same key; a second worker that rendered the same job after its lease expired
writes different bytes (the metadata names the worker and timings) to a different key, so it can
never overwrite — or, when it backs off, delete — the object a committed row already points at.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.orm import Session

from catalogue.errors import InvalidRecordError
from catalogue.jobs import as_json
from catalogue.models import Job, Render
from catalogue.pngmeta import PngFormatError, embed_render_metadata, png_size
from catalogue.store import ObjectStore
from catalogue.thumbs import make_thumbnail
from linstudio_jobs import JobSpec

PNG_CONTENT_TYPE = "image/png"
THUMB_CONTENT_TYPE = "image/webp"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Artifacts:
    """Everything an ingest uploads and records, computed before the store or database is touched."""

    render_id: str
    png: bytes
    thumb: bytes
    sha256: str
    thumb_sha256: str
    width: int
    height: int
    object_key: str
    thumb_key: str
    embedded: dict  # the JSON record inside the PNG's `linstudio` chunk

    @property
    def keys(self) -> tuple[str, str]:
        return (self.object_key, self.thumb_key)


def _segment(value: str) -> str:
    """A key segment from a team/project/asset name: anything but [A-Za-z0-9._-] becomes `_`."""
    cleaned = _UNSAFE.sub("_", value).strip(".") or "_"
    return cleaned


def object_keys(team: str, project: str, asset_id: str, job_key: str, sha256: str) -> tuple[str, str]:
    """(PNG key, thumbnail key) for a render: see the module docstring for why the hash is in the name."""
    stem = f"{_segment(team)}/{_segment(project)}/{_segment(asset_id)}/{_segment(job_key[:16])}-{sha256[:12]}"
    return f"renders/{stem}.png", f"thumbs/{stem}.webp"


def prepare(job: Job, png: bytes, record: Mapping, worker: str, render_id: str, now: datetime) -> Artifacts:
    """Embed the settings into `png`, make the thumbnail, hash both and name their keys.

    The embedded record is the planned job record, overlaid with the caller's (engine metadata,
    timings) and who/when/which render, so a PNG found anywhere says where it belongs. Identity
    (key, team, project, asset) always comes from the planned job.
    """
    if record.get("key") not in (None, job.key):
        raise InvalidRecordError(f"job {job.key}: ingest record is for job {record.get('key')!r}")
    try:
        width, height = png_size(png)
    except PngFormatError as exc:
        raise InvalidRecordError(f"job {job.key}: render is not a PNG ({exc})") from None
    planned = job.record
    spec = JobSpec.from_record(planned)
    embedded = as_json({
        **planned,
        **record,
        "key": job.key,
        "team": spec.team,
        "project": spec.project,
        "asset_id": spec.asset_id,
        "render_id": render_id,
        "worker": worker,
        "created_at": now.isoformat(),
        "width": width,
        "height": height,
    })
    final_png = embed_render_metadata(png, embedded)
    thumb = make_thumbnail(final_png)
    sha256 = hashlib.sha256(final_png).hexdigest()
    object_key, thumb_key = object_keys(spec.team, spec.project, spec.asset_id, job.key, sha256)
    return Artifacts(render_id=render_id, png=final_png, thumb=thumb, sha256=sha256,
                     thumb_sha256=hashlib.sha256(thumb).hexdigest(), width=width, height=height,
                     object_key=object_key, thumb_key=thumb_key, embedded=embedded)


def upload(store: ObjectStore, artifacts: Artifacts) -> None:
    """Put the PNG, then the thumbnail (a retried upload of the same bytes overwrites the same keys)."""
    store.put(artifacts.object_key, artifacts.png, PNG_CONTENT_TYPE)
    store.put(artifacts.thumb_key, artifacts.thumb, THUMB_CONTENT_TYPE)


# Built once, as a Core INSERT on the table: an ORM Render added and flushed per job cost ~0.5 ms
# more CPU than this, on the cores that feed the GPU (bench/job_cost_bench.py).
_INSERT_RENDER = insert(Render.__table__)


def insert_render(session: Session, job: Job, artifacts: Artifacts, store: ObjectStore, worker: str,
                  now: datetime) -> str:
    """Insert the render row for `job` (not committed); returns its id. A unique violation
    (IntegrityError) means the job already has a render."""
    record = artifacts.embedded
    spec = JobSpec.from_record(record)  # the planned job: identity and settings
    session.execute(_INSERT_RENDER, {
        "id": artifacts.render_id,
        "job_key": job.key,
        "submission_id": job.submission_id,
        "asset_pk": job.asset_pk,
        "team": spec.team,
        "project": spec.project,
        "asset_id": spec.asset_id,
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "seed": spec.seed,
        "width": artifacts.width,
        "height": artifacts.height,
        "steps": spec.steps,
        "guidance": spec.guidance,
        "scheduler": spec.scheduler,
        "model": spec.model,
        "model_identity": spec.model_identity,
        "engine": record.get("engine") or {},  # what the run added: not the job's
        "timings": record.get("timings") or {},
        "tags": list(spec.tags),
        "record": record,
        "worker": worker,
        "object_key": artifacts.object_key,
        "object_uri": store.uri(artifacts.object_key),
        "thumb_key": artifacts.thumb_key,
        "thumb_uri": store.uri(artifacts.thumb_key),
        "sha256": artifacts.sha256,
        "size_bytes": len(artifacts.png),
        "thumb_sha256": artifacts.thumb_sha256,
        "parent_render_id": spec.parent_render_id,
        "created_at": now,
        "review_status": None,
    })
    return artifacts.render_id
