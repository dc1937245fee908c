"""Submission status: queued (in the inbox) -> running -> done | failed; queued -> cancelled.

Transitions are conditional UPDATEs, so two nightly runs (or a run and a cancel) racing on one
submission cannot both win: exactly one sees its row change.

`settle` finishes a submission a run left `running` (it died, or the database went down as it
recorded the outcome) from the catalogue's truth, its jobs' states; `queued_for_manifest` is what
`linstudio submit` asks so that one manifest is queued once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import hashlib
from collections.abc import Sequence

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from catalogue.db import chunked
from catalogue.errors import CatalogueError
from catalogue.models import DONE, FAILED, Job, Submission

FINAL = ("done", "failed", "cancelled")
# Said in a settled submission's reason, so whoever reads it knows no run recorded this outcome itself.
SETTLED_NOTE = "settled from the catalogue: the run that had it ended without recording its outcome"
REASONS_SHOWN = 5


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
             "manifest_path": row.manifest_path, "manifest_sha256": row.manifest_sha256,
             "status": row.status, "error": row.error,
             "submitted_by": row.submitted_by, "job_count": row.job_count, "jobs": counts[row.id],
             "created_at": row.created_at.isoformat(),
             "finished_at": row.finished_at.isoformat() if row.finished_at else None} for row in rows]


def failure_summary(count: int, reasons: Sequence[str]) -> str:
    """`N job(s) failed: reason; reason` (at most REASONS_SHOWN distinct reasons), as every run records it."""
    return f"{count} job(s) failed: " + "; ".join(sorted(set(reasons))[:REASONS_SHOWN])


def settle(session: Session, submission_id: str, keys: Sequence[str], now: datetime) -> tuple[str, str | None] | None:
    """Finish a `running` submission from the states of its jobs `keys`: all done -> done; all ended and
    some failed -> failed with their reasons. None (left running) when a job is still planned or leased —
    a run may be on it — or not planned at all, or when the submission is no longer running."""
    states: dict[str, tuple[str, str | None]] = {}
    for chunk in chunked(sorted(set(keys))):
        for key, state, error in session.execute(select(Job.key, Job.state, Job.error).where(Job.key.in_(chunk))):
            states[key] = (state, error)
    if len(states) < len(set(keys)) or any(state not in (DONE, FAILED) for state, _ in states.values()):
        return None
    failed = [error or "failed" for state, error in states.values() if state == FAILED]
    status, error = ("failed", f"{failure_summary(len(failed), failed)} ({SETTLED_NOTE})") if failed else ("done", None)
    result = session.execute(update(Submission).where(Submission.id == submission_id, Submission.status == "running")
                             .values(status=status, error=error, finished_at=now))
    return (status, error) if result.rowcount == 1 else None


def lock_manifest(session: Session, manifest_path: str) -> None:
    """Serialise queueing of one manifest path until the transaction ends, so two `submit`s of it at once
    cannot both queue it. SQLite needs nothing: every write transaction begins with BEGIN IMMEDIATE
    (catalogue.db). PostgreSQL: a transaction-scoped advisory lock keyed by the path."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(manifest_path.encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def queued_for_manifest(session: Session, manifest_path: str) -> list[Submission]:
    """The submissions of `manifest_path` still queued, oldest first."""
    return list(session.scalars(select(Submission).where(Submission.manifest_path == manifest_path,
                                                         Submission.status == "queued").order_by(Submission.id)))
