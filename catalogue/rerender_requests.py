"""Requests to start planned jobs in the background, written by the gallery and taken by `flows`.

The gallery's "re-render" and "retry" buttons plan jobs in the catalogue (catalogue.rerenders,
catalogue.web.service.retry_job) and then record one request here instead of starting a render
process themselves: the catalogue does not depend on orchestration, and a request made just before
the gallery restarts is still there afterwards. `flows.requests.RerenderDispatcher` (run by
`linstudio serve`) claims each request, starts its jobs, and marks it started.

A claim that is not marked started within `stale_seconds` (the dispatcher died between the two)
may be claimed again. Starting a job twice is harmless: jobs are leased in the catalogue, so a
second runner finds them taken or done and renders nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from catalogue.ids import new_ulid
from catalogue.models import REQUEST_CLAIMED, REQUEST_QUEUED, REQUEST_STARTED, RerenderRequest

STALE_SECONDS = 60.0


def request_start(session: Session, kind: str, job_keys: list[str], requested_by: str, now: datetime) -> str:
    """Record that `job_keys` (planned jobs) should be started in the background; returns the request id."""
    if not job_keys:
        raise ValueError("a rerender request needs at least one job key")
    request_id = new_ulid(now)
    session.add(RerenderRequest(id=request_id, kind=kind, job_keys=list(job_keys), requested_by=requested_by,
                                state=REQUEST_QUEUED, created_at=now))
    return request_id


def _claimable(now: datetime, stale_seconds: float):
    stale = now - timedelta(seconds=stale_seconds)
    return or_(RerenderRequest.state == REQUEST_QUEUED,
               (RerenderRequest.state == REQUEST_CLAIMED) & (RerenderRequest.claimed_at < stale))


def claim(session: Session, dispatcher: str, now: datetime,
          stale_seconds: float = STALE_SECONDS) -> dict[str, Any] | None:
    """Take the oldest waiting request for `dispatcher`; None if there is none or another took it first."""
    candidate = session.scalar(select(RerenderRequest.id).where(_claimable(now, stale_seconds))
                               .order_by(RerenderRequest.id).limit(1))
    if candidate is None:
        return None
    taken = session.execute(update(RerenderRequest)
                            .where(RerenderRequest.id == candidate, _claimable(now, stale_seconds))
                            .values(state=REQUEST_CLAIMED, claimed_by=dispatcher, claimed_at=now))
    if taken.rowcount != 1:
        return None
    return request_dict(session.get(RerenderRequest, candidate, populate_existing=True))


def mark_started(session: Session, request_id: str, dispatcher: str, now: datetime) -> bool:
    """The jobs of `request_id` were started; False when `dispatcher` no longer holds the claim."""
    result = session.execute(update(RerenderRequest)
                             .where(RerenderRequest.id == request_id, RerenderRequest.claimed_by == dispatcher,
                                    RerenderRequest.state == REQUEST_CLAIMED)
                             .values(state=REQUEST_STARTED, started_at=now))
    return result.rowcount == 1


def waiting(session: Session) -> list[dict[str, Any]]:
    """Requests not yet started (queued or claimed), oldest first."""
    rows = session.scalars(select(RerenderRequest).where(RerenderRequest.state != REQUEST_STARTED)
                           .order_by(RerenderRequest.id))
    return [request_dict(row) for row in rows]


def request_dict(row: RerenderRequest) -> dict[str, Any]:
    return {"request_id": row.id, "kind": row.kind, "job_keys": list(row.job_keys),
            "requested_by": row.requested_by, "state": row.state, "claimed_by": row.claimed_by,
            "claimed_at": row.claimed_at, "created_at": row.created_at, "started_at": row.started_at}
