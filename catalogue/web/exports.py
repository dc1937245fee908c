"""The export queue: deliveries asked for in the gallery, as rows that background workers take and report on.

A request only validates the selection (rows, names, sizes: cheap) and queues it here; the pixels
are converted and written by an export worker (catalogue.web.export_runner), so a 16K delivery
never holds a web worker. Each export records its progress (`done` of `total` files), so a page and
the API can show it while it runs.

Two requests for the same selection — the same renders, destination, format, naming and metadata
choice — share one export: the first queues it, the second joins it (the `exports.active_key`
unique constraint settles a race between gallery processes). Once it has finished, the same
selection may be exported again.

Workers lease what they run, like render jobs: a running export whose lease ran out (its gallery
process died) is taken over by another worker and written again from the start (names are
deterministic, so files are overwritten, not duplicated).

Functions take the caller's session and never commit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from catalogue.db import insert_ignoring_conflicts
from catalogue.errors import CatalogueError
from catalogue.export import ExportOptions
from catalogue.ids import new_ulid
from catalogue.models import EXPORT_DONE, EXPORT_FAILED, EXPORT_QUEUED, EXPORT_RUNNING, Export

MAX_ACTIVE = 100  # queued or running exports; more are refused until some finish
LEASE_SECONDS = 600  # renewed with each file written


class QueueFull(CatalogueError):
    """Too many exports are waiting; the request should be made again later."""


def selection_sha256(options: ExportOptions, render_ids: Sequence[str]) -> str:
    """What makes two exports "the same": the renders (in any order), destination, format, naming, metadata."""
    shape = {"render_ids": sorted(set(render_ids)), "destination": options.destination, "format": options.format,
             "template": options.template, "keep_metadata": options.keep_metadata, "quality": options.quality}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


def queue(session: Session, options: ExportOptions, render_ids: Sequence[str], who: str,
          now: datetime) -> tuple[dict[str, Any], bool]:
    """Queue an export of `render_ids`, or join the queued or running export of the same selection.

    Returns (the export as `export_dict` shapes it, whether it was joined rather than queued).
    """
    key = selection_sha256(options, render_ids)
    running = session.scalar(select(Export).where(Export.active_key == key))
    if running is not None:
        return export_dict(running), True
    active = session.scalar(select(func.count()).select_from(Export).where(Export.active_key.is_not(None)))
    if active >= MAX_ACTIVE:
        raise QueueFull(f"{active} exports are queued or running; try again when some have finished")
    ours = new_ulid(now)
    row = {"id": ours, "selection_sha256": key, "active_key": key, "state": EXPORT_QUEUED, "requested_by": who,
           "destination": options.destination, "render_ids": sorted(set(render_ids)), "total": len(set(render_ids)),
           "done": 0, "created_at": now,
           "options": {"format": options.format, "template": options.template,
                       "keep_metadata": options.keep_metadata, "quality": options.quality}}
    insert_ignoring_conflicts(session, Export.__table__, [row], ["active_key"])
    found = session.scalar(select(Export).where(Export.active_key == key).execution_options(populate_existing=True))
    return export_dict(found), found.id != ours


def get(session: Session, export_id: str) -> dict[str, Any] | None:
    row = session.get(Export, export_id)
    return None if row is None else export_dict(row)


def recent(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    """Exports newest first (ids are ULIDs), without their file lists."""
    rows = session.scalars(select(Export).order_by(Export.id.desc()).limit(limit))
    return [export_dict(row, files=False) for row in rows]


def _claimable(now: datetime):
    return or_(Export.state == EXPORT_QUEUED,
               and_(Export.state == EXPORT_RUNNING, Export.lease_expires_at < now))


def claim(session: Session, worker: str, now: datetime) -> dict[str, Any] | None:
    """Lease the oldest queued export (or one whose worker's lease ran out) to `worker`; None if there is none
    or another worker took it first (the caller simply asks again)."""
    candidate = session.scalar(select(Export.id).where(_claimable(now)).order_by(Export.id).limit(1))
    if candidate is None:
        return None
    taken = session.execute(update(Export).where(Export.id == candidate, _claimable(now))
                            .values(state=EXPORT_RUNNING, worker=worker, done=0, written=None,
                                    lease_expires_at=now + timedelta(seconds=LEASE_SECONDS),
                                    started_at=func.coalesce(Export.started_at, now)))
    if taken.rowcount != 1:
        return None
    row = session.get(Export, candidate, populate_existing=True)
    return export_dict(row) | {"render_ids": list(row.render_ids), "options": dict(row.options)}


def progress(session: Session, export_id: str, worker: str, done: int, now: datetime) -> bool:
    """Record `done` files written and renew the lease; False when `worker` no longer holds the export."""
    result = session.execute(update(Export).where(Export.id == export_id, Export.worker == worker,
                                                  Export.state == EXPORT_RUNNING)
                             .values(done=done, lease_expires_at=now + timedelta(seconds=LEASE_SECONDS)))
    return result.rowcount == 1


def finish(session: Session, export_id: str, worker: str, written: list[str], now: datetime) -> bool:
    """Done: every file written. Frees the selection, so it may be exported again."""
    return _end(session, export_id, worker, now, state=EXPORT_DONE, done=len(written), written=written)


def fail(session: Session, export_id: str, worker: str, error: str, now: datetime) -> bool:
    """Failed with `error` (what the artist sees). Frees the selection."""
    return _end(session, export_id, worker, now, state=EXPORT_FAILED, error=error)


def release(session: Session, export_id: str, worker: str) -> bool:
    """Back to queued (the gallery process is stopping), so another worker starts it again at once."""
    result = session.execute(update(Export).where(Export.id == export_id, Export.worker == worker,
                                                  Export.state == EXPORT_RUNNING)
                             .values(state=EXPORT_QUEUED, worker=None, lease_expires_at=None, done=0))
    return result.rowcount == 1


def _end(session: Session, export_id: str, worker: str, now: datetime, **values) -> bool:
    result = session.execute(update(Export).where(Export.id == export_id, Export.worker == worker,
                                                  Export.state == EXPORT_RUNNING)
                             .values(active_key=None, lease_expires_at=None, finished_at=now, **values))
    return result.rowcount == 1


def export_dict(row: Export, files: bool = True) -> dict[str, Any]:
    """The public shape of an export (API and pages); `files` adds the URIs written (once it is done)."""
    shape = {"export_id": row.id, "state": row.state, "done": row.done, "total": row.total,
             "destination": row.destination, "format": row.options.get("format"),
             "template": row.options.get("template"), "keep_metadata": row.options.get("keep_metadata"),
             "requested_by": row.requested_by, "error": row.error, "created_at": row.created_at.isoformat(),
             "started_at": row.started_at.isoformat() if row.started_at else None,
             "finished_at": row.finished_at.isoformat() if row.finished_at else None,
             "url": f"/api/exports/{row.id}", "page": f"/exports/{row.id}"}
    if files:
        shape["written"] = list(row.written or [])
    return shape
