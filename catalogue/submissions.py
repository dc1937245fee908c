"""Submission status: queued (in the inbox) -> running -> done | failed; queued -> cancelled.

Transitions are conditional UPDATEs, so two nightly runs (or a run and a cancel) racing on one
submission cannot both win: exactly one sees its row change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from catalogue.errors import CatalogueError
from catalogue.models import Job, Submission

FINAL = ("done", "failed", "cancelled")


def set_queued(session: Session, submission_id: str, submitted_by: str) -> None:
    session.execute(update(Submission).where(Submission.id == submission_id)
                    .values(status="queued", submitted_by=submitted_by))


def transition(session: Session, submission_id: str, before: str, after: str, now: datetime) -> bool:
    values: dict[str, Any] = {"status": after}
    if after in FINAL:
        values["finished_at"] = now
    result = session.execute(update(Submission)
                             .where(Submission.id == submission_id, Submission.status == before).values(**values))
    if result.rowcount == 1:
        return True
    if session.get(Submission, submission_id) is None:
        raise CatalogueError(f"submission {submission_id!r} is not in this catalogue")
    return False


def finish(session: Session, submission_id: str, status: str, error: str | None, now: datetime) -> None:
    if status not in ("done", "failed"):
        raise ValueError(f"a submission finishes done or failed, not {status!r}")
    session.execute(update(Submission).where(Submission.id == submission_id)
                    .values(status=status, error=error, finished_at=now))


def listing(session: Session, status: str | None, limit: int) -> list[dict[str, Any]]:
    query = select(Submission).order_by(Submission.id.desc()).limit(limit)
    if status:
        query = query.where(Submission.status == status)
    rows = list(session.scalars(query))
    counts: dict[str, dict[str, int]] = {row.id: {} for row in rows}
    if rows:
        per_state = (select(Job.submission_id, Job.state, func.count())
                     .where(Job.submission_id.in_(list(counts))).group_by(Job.submission_id, Job.state))
        for submission_id, state, count in session.execute(per_state):
            counts[submission_id][state] = count
    return [{"submission_id": row.id, "team": row.team, "project": row.project,
             "manifest_path": row.manifest_path, "status": row.status, "error": row.error,
             "submitted_by": row.submitted_by, "job_count": row.job_count, "jobs": counts[row.id],
             "created_at": row.created_at.isoformat(),
             "finished_at": row.finished_at.isoformat() if row.finished_at else None} for row in rows]
