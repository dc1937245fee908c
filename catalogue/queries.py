"""Reading renders back: the dict shape `catalogue ls --json`, `show` and the gallery share.

Listing is keyset-paged on the render id (a time-ordered ULID), newest first: pass the last id of
a page as `after` to get the next one. Unlike OFFSET paging this stays fast deep into a large
catalogue and never skips or repeats a render when new ones arrive between pages.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from catalogue.models import Render

MAX_LIMIT = 1000


def render_dict(render: Render, *, full: bool = False) -> dict[str, Any]:
    """The public shape of a render; `full` adds the whole record embedded in the PNG."""
    shape = {
        "render_id": render.id,
        "job_key": render.job_key,
        "submission_id": render.submission_id,
        "team": render.team,
        "project": render.project,
        "asset_id": render.asset_id,
        "prompt": render.prompt,
        "negative_prompt": render.negative_prompt,
        "seed": render.seed,
        "width": render.width,
        "height": render.height,
        "steps": render.steps,
        "guidance": render.guidance,
        "scheduler": render.scheduler,
        "model": render.model,
        "model_identity": render.model_identity,
        "tags": list(render.tags or []),
        "engine": render.engine,
        "timings": render.timings,
        "worker": render.worker,
        "object_uri": render.object_uri,
        "thumb_uri": render.thumb_uri,
        "object_key": render.object_key,
        "thumb_key": render.thumb_key,
        "sha256": render.sha256,
        "size_bytes": render.size_bytes,
        "parent_render_id": render.parent_render_id,
        "created_at": render.created_at.isoformat(),
    }
    if full:
        shape["record"] = render.record
        shape["projection"] = projection_of(render.record)
    return shape


def projection_of(record: dict | None) -> str | None:
    """The render's projection from its stored record (`equirectangular` for VR panoramas), else None."""
    value = (record or {}).get("projection")
    return value if isinstance(value, str) else None


def list_renders(session: Session, team: str | None = None, project: str | None = None, limit: int = 100,
                 after: str | None = None) -> list[dict[str, Any]]:
    """Renders newest first, optionally for one team / project, starting after render id `after`."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    query = select(Render)
    if team is not None:
        query = query.where(Render.team == team)
    if project is not None:
        query = query.where(Render.project == project)
    if after is not None:
        query = query.where(Render.id < after)
    renders = session.scalars(query.order_by(Render.id.desc()).limit(limit))
    return [render_dict(render) for render in renders]


def get_render(session: Session, render_id: str) -> dict[str, Any] | None:
    """One render with its full record, or None."""
    render = session.get(Render, render_id)
    return None if render is None else render_dict(render, full=True)
