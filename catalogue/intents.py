"""Upload intents: the write-ahead log that keeps objects and rows together.

Before an ingest uploads anything (or a forget deletes anything) it commits an intent naming the
object keys. Whatever happens next — an exception, a killed process, a lost database — the intent
is still there, so `sweep` can later remove every object no render row references. The ingest's
final transaction deletes its intent only while it is `open`; a sweep first turns it `sweeping`.
Whichever commits first wins, and the loser backs off, so a sweep never deletes objects a render
row is about to reference.

Functions take the caller's session and never commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, delete, insert, not_, or_, select, update
from sqlalchemy.orm import Session

from catalogue.db import chunked
from catalogue.errors import IntentSweptError
from catalogue.models import OPEN, RUNNING, SWEEPING, Job, Render, UploadIntent
from catalogue.store import ObjectStore


# An ingest opens and closes one intent per job: both statements are built once, as Core
# statements on the table (an ORM add-and-flush or DELETE built per call cost ~0.5 ms of CPU each).
_intents = UploadIntent.__table__
_OPEN = insert(_intents).returning(_intents.c.id)
_CLOSE = delete(_intents).where(_intents.c.id == bindparam("intent_id"), _intents.c.state == OPEN)


def open_intent(
    session: Session, job_key: str, purpose: str, object_keys: Sequence[str], worker: str | None, now: datetime
) -> int:
    """Record that `object_keys` are about to change for `job_key`; returns the intent id."""
    return session.execute(_OPEN, {"job_key": job_key, "purpose": purpose, "state": OPEN,
                                   "object_keys": list(object_keys), "worker": worker, "created_at": now}).scalar_one()


def close_intent(session: Session, intent_id: int) -> None:
    """Remove an ingest's own intent in its final transaction; IntentSweptError when a sweep took it."""
    result = session.execute(_CLOSE, {"intent_id": intent_id})
    if result.rowcount != 1:
        raise IntentSweptError(
            f"upload intent {intent_id} was swept while its objects were uploading (the job's lease probably "
            "expired mid-ingest); the render was not recorded"
        )


def drop_intent(session: Session, intent_id: int) -> None:
    """Remove an intent whose objects are settled (deleted, or referenced by a row)."""
    session.execute(delete(UploadIntent).where(UploadIntent.id == intent_id))


def _owner_still_working(now: datetime):
    """SQL: the intent's job is running under a live lease held by the intent's worker.

    An ingest runs while its worker holds the job's lease, so an intent whose job is planned, failed,
    done, leased to someone else or past its lease cannot belong to an ingest still in progress.
    """
    return and_(Job.state == RUNNING, Job.lease_owner == UploadIntent.worker, Job.lease_expires_at > now)


def due_for_sweep(session: Session, now: datetime, grace_seconds: float) -> list[UploadIntent]:
    """Intents to sweep: open ones whose worker no longer holds the job's lease, open ones older than
    the grace period whatever the lease says, and any left `sweeping` by a sweeper that died."""
    cutoff = now - timedelta(seconds=grace_seconds)
    abandoned = or_(UploadIntent.created_at <= cutoff, Job.id.is_(None), not_(_owner_still_working(now)))
    return list(session.scalars(
        select(UploadIntent)
        .outerjoin(Job, Job.key == UploadIntent.job_key)
        .where(or_(UploadIntent.state == SWEEPING, and_(UploadIntent.state == OPEN, abandoned)))
        .order_by(UploadIntent.id)
    ))


def start_sweeping(session: Session, intent_id: int) -> bool:
    """Take the intent for sweeping; False when its ingest committed (or another sweep finished it) meanwhile.

    This compare-and-set against the ingest's own `close_intent` is what makes sweeping safe: exactly
    one of the two succeeds.
    """
    result = session.execute(
        update(UploadIntent)
        .where(UploadIntent.id == intent_id, UploadIntent.state.in_((OPEN, SWEEPING)))
        .values(state=SWEEPING)
    )
    return result.rowcount == 1


def unfinished(session: Session) -> list[UploadIntent]:
    """Every intent still recorded (in flight, or left behind by a failure)."""
    return list(session.scalars(select(UploadIntent).order_by(UploadIntent.id)))


def referenced_keys(session: Session, object_keys: Iterable[str]) -> set[str]:
    """The keys among `object_keys` that a render row points at (PNG or thumbnail): never delete those."""
    keys = sorted(set(object_keys))
    found: set[str] = set()
    for chunk in chunked(keys):
        found.update(session.scalars(select(Render.object_key).where(Render.object_key.in_(chunk))))
        found.update(session.scalars(select(Render.thumb_key).where(Render.thumb_key.in_(chunk))))
    return found


def delete_objects(store: ObjectStore, object_keys: Iterable[str], keep: set[str]) -> list[str]:
    """Delete the objects not in `keep` that exist; returns the keys actually deleted.

    Raises whatever the store raises: the caller keeps the intent so a later sweep retries.
    """
    deleted = []
    for key in object_keys:
        if key in keep or not store.exists(key):
            continue
        store.delete(key)
        deleted.append(key)
    return deleted
