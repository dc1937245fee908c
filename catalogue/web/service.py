"""What the gallery's pages and API both do, as plain functions over a session.

Routes stay thin: they authenticate, call one of these inside `catalogue.transaction()`, and
render or serialise the result. Nothing here commits or knows about HTTP.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import PurePath
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from catalogue.models import DONE, FAILED, PLANNED, RUNNING, Job, Render, Submission
from catalogue.queries import render_dict

LINEAGE_DEPTH = 32  # ancestors followed at most (a re-render of a re-render of ...)
SIBLINGS_MAX = 200


def render_full(session: Session, render_id: str) -> dict[str, Any] | None:
    """One render with its full record and review status, or None."""
    render = session.get(Render, render_id)
    if render is None:
        return None
    return render_dict(render, full=True) | {"review_status": render.review_status, "asset_pk": render.asset_pk}


def render_exists(session: Session, render_id: str) -> bool:
    return session.scalar(select(Render.id).where(Render.id == render_id)) is not None


def siblings(session: Session, asset_pk: int) -> list[dict[str, Any]]:
    """Every render of one asset (seeds, sizes, models), newest first, for side-by-side comparison."""
    renders = session.scalars(select(Render).where(Render.asset_pk == asset_pk).order_by(Render.id.desc())
                              .limit(SIBLINGS_MAX))
    return [render_dict(r) | {"review_status": r.review_status} for r in renders]


def lineage(session: Session, render_id: str) -> dict[str, Any]:
    """Ancestors (root first) and the tree of re-renders below `render_id`.

    Returns {"ancestors": [render, ...], "children": [{"render": ..., "children": [...]}, ...]}.
    """
    ancestors = []
    current = session.get(Render, render_id)
    seen = {render_id}
    while current is not None and current.parent_render_id and len(ancestors) < LINEAGE_DEPTH:
        if current.parent_render_id in seen:
            break  # a cycle would be a corrupt catalogue; never loop on it
        seen.add(current.parent_render_id)
        current = session.get(Render, current.parent_render_id)
        if current is not None:
            ancestors.append(_brief(current))
    ancestors.reverse()
    return {"ancestors": ancestors, "children": _descendants(session, render_id, seen, LINEAGE_DEPTH)}


def _descendants(session: Session, render_id: str, seen: set[str], depth: int) -> list[dict[str, Any]]:
    if depth == 0:
        return []
    tree = []
    for child in session.scalars(select(Render).where(Render.parent_render_id == render_id).order_by(Render.id)):
        if child.id in seen:
            continue
        seen.add(child.id)
        tree.append({"render": _brief(child), "children": _descendants(session, child.id, seen, depth - 1)})
    return tree


def _brief(render: Render) -> dict[str, Any]:
    return {"render_id": render.id, "width": render.width, "height": render.height, "seed": render.seed,
            "model": render.model, "review_status": render.review_status, "created_at": render.created_at.isoformat()}


def rerender_jobs(session: Session, render: dict[str, Any]) -> list[dict[str, Any]]:
    """Jobs asking for re-renders of `render` (their record names it as parent): the page's progress."""
    jobs = session.scalars(select(Job).where(Job.asset_pk == render["asset_pk"]).order_by(Job.id.desc()).limit(500))
    return [job_dict(job) for job in jobs if (job.record or {}).get("parent_render_id") == render["render_id"]]


def job_dict(job: Job) -> dict[str, Any]:
    record = job.record or {}
    return {"key": job.key, "state": job.state, "error": job.error, "attempts": job.attempts,
            "submission_id": job.submission_id, "asset_id": record.get("asset_id"),
            "width": record.get("width"), "height": record.get("height"), "seed": record.get("seed"),
            "updated_at": job.updated_at.isoformat()}


# -- submissions -------------------------------------------------------------------------------------


def derived_status(counts: Counter) -> str:
    """A status from job states alone, for catalogues whose submissions carry none: queued = all planned;
    running = any running (or some done, some planned); failed = any failed and none running or planned;
    done = all done."""
    if counts[RUNNING]:
        return "running"
    if counts[PLANNED]:
        return "queued" if counts[PLANNED] == sum(counts.values()) else "running"
    if counts[FAILED]:
        return "failed"
    return "done"


def _state_counts(session: Session, submission_ids: list[str]) -> dict[str, Counter]:
    counts: dict[str, Counter] = {sid: Counter() for sid in submission_ids}
    if not submission_ids:
        return counts
    rows = session.execute(select(Job.submission_id, Job.state, func.count()).where(Job.submission_id.in_(submission_ids))
                           .group_by(Job.submission_id, Job.state))
    for submission_id, state, count in rows:
        counts[submission_id][state] = count
    return counts


def submissions(session: Session, team: str | None = None, limit: int = 50,
                before: str | None = None) -> list[dict[str, Any]]:
    """Submissions newest first (keyset on the ULID id), each with its derived status and job counts."""
    query = select(Submission)
    if team:
        query = query.where(Submission.team == team)
    if before:
        query = query.where(Submission.id < before)
    rows = list(session.scalars(query.order_by(Submission.id.desc()).limit(limit)))
    counts = _state_counts(session, [s.id for s in rows])
    return [_submission_dict(s, counts[s.id]) for s in rows]


def submission(session: Session, submission_id: str) -> dict[str, Any] | None:
    """One submission with its failed jobs' errors and the renders it produced."""
    row = session.get(Submission, submission_id)
    if row is None:
        return None
    shape = _submission_dict(row, _state_counts(session, [submission_id])[submission_id])
    failed = session.scalars(select(Job).where(Job.submission_id == submission_id, Job.state == FAILED)
                             .order_by(Job.id).limit(500))
    shape["errors"] = [job_dict(job) for job in failed]
    planned = session.scalars(select(Job).where(Job.submission_id == submission_id, Job.state == PLANNED)
                              .order_by(Job.id).limit(500))
    shape["queued_jobs"] = [job_dict(job) for job in planned]
    renders = session.scalars(select(Render).where(Render.submission_id == submission_id).order_by(Render.id.desc())
                              .limit(500))
    shape["renders"] = [render_dict(r) | {"review_status": r.review_status} for r in renders]
    return shape


def _submission_dict(row: Submission, counts: Counter) -> dict[str, Any]:
    """The submission as the lifecycle recorded it (`status`, `error`, issue 7's columns), with job counts.

    `status` is the submission's own column where the schema has it (migration 0003: queued in the
    inbox, running, done, failed with why, cancelled); job states alone cannot tell "queued in the
    inbox" from "cancelled". Without the column it is derived from the jobs (`derived_status`).
    """
    status = getattr(row, "status", None) or derived_status(counts)
    return {"submission_id": row.id, "team": row.team, "project": row.project, "manifest_path": row.manifest_path,
            "manifest_name": PurePath(row.manifest_path).name,
            "job_count": row.job_count, "created_at": row.created_at.isoformat(), "status": status,
            "error": getattr(row, "error", None), "submitted_by": getattr(row, "submitted_by", None),
            "jobs": {state: counts[state] for state in (PLANNED, RUNNING, DONE, FAILED)}}


# -- housekeeping --------------------------------------------------------------------------------------


def retry_job(session: Session, key: str, now: datetime) -> bool:
    """Send a failed job back to planned (its error cleared); False unless it was failed."""
    result = session.execute(update(Job).where(Job.key == key, Job.state == FAILED)
                             .values(state=PLANNED, error=None, lease_owner=None, lease_expires_at=None, updated_at=now))
    return result.rowcount == 1


def cancel_job(session: Session, key: str, who: str, now: datetime, reason: str = "cancelled") -> bool:
    """Take a queued (planned) job out of the queue by failing it with `reason by who`; False unless planned.

    The job table has no `cancelled` state; a failed job with this reason is skipped by runs in
    progress and planned again only when someone re-runs its manifest or retries it.
    """
    result = session.execute(update(Job).where(Job.key == key, Job.state == PLANNED)
                             .values(state=FAILED, error=f"{reason} by {who}", updated_at=now, finished_at=now))
    return result.rowcount == 1


def job_of(session: Session, key: str) -> dict[str, Any] | None:
    job = session.scalar(select(Job).where(Job.key == key))
    return None if job is None else job_dict(job)
