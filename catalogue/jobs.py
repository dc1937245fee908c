"""Submissions, assets and jobs: planning work and leasing it to workers.

Every function takes the caller's session and never commits: `catalogue.api.Catalogue` decides
where transactions begin and end. Lease changes are single conditional UPDATEs (`... WHERE state
IN (...)`), so two workers racing for one job cannot both win on SQLite or PostgreSQL.

Whether a lease's owner is still alive, seen from any host (see `silence_seconds`): a run renews
every lease it holds every `heartbeat_seconds`, from the claim to the job's end, so a running job's
`updated_at` is its owner's last heartbeat and `lease_expires_at - updated_at` the lease length the
owner asked for. A lease that stays exactly as it was for `silence_seconds` while the database
answers belongs to a run that is gone (killed, finished, or cut off from the database): only then
may someone else release it before it expires (`release_unrenewed`, a compare-and-set on the very
heartbeat observed, so a live owner's next renewal always wins).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from catalogue.db import chunked, insert_ignoring_conflicts
from catalogue.errors import CatalogueError, InvalidRecordError, UnknownJobError
from catalogue.ids import new_ulid
from catalogue.models import DONE, FAILED, PLANNED, RUNNING, Asset, Job, Render, Submission
from linstudio_jobs import JobSpec

log = logging.getLogger(__name__)

# What a job record (`JobSpec.to_record()`) must carry, with the types the catalogue relies on;
# `validate_record` then reads the whole record as a JobSpec.
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "key": str,
    "team": str,
    "project": str,
    "asset_id": str,
    "prompt": str,
    "seed": int,
    "width": int,
    "height": int,
    "model": str,
}
REASON_LIMIT = 2000


def as_json(value: Mapping) -> dict:
    """A JSON-safe copy of a record (paths and other objects become strings), as the JSON columns store it."""
    return json.loads(json.dumps(value, default=str))


def record_place(record: Mapping, index: int) -> str:
    """Where a record came from, for error messages: `manifest.yaml:14 job abc123` or `record 3`."""
    where = record.get("manifest_path")
    if where and record.get("manifest_line"):
        where = f"{where}:{record['manifest_line']}"
    job = f"job {record['key']}" if isinstance(record.get("key"), str) else f"record {index}"
    return f"{where} {job}" if where else job


def validate_record(record: Mapping, index: int = 0) -> None:
    """Raise InvalidRecordError naming the record and field when a required field is missing or mistyped."""
    for field, kind in REQUIRED_FIELDS.items():
        if field not in record or record[field] is None:
            raise InvalidRecordError(f"{record_place(record, index)}: missing {field!r}")
        value = record[field]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InvalidRecordError(
                f"{record_place(record, index)}: {field!r} must be {getattr(kind, '__name__', kind)}, "
                f"got {type(value).__name__} {value!r}"
            )
    try:
        JobSpec.from_record(record)  # the rest of the spec, and the size rule every job obeys
    except (TypeError, ValueError) as exc:
        raise InvalidRecordError(f"{record_place(record, index)}: {exc}") from None


def create_submission(
    session: Session, team: str, project: str, manifest_path: str, manifest_sha256: str, job_count: int, now: datetime
) -> str:
    """Record one manifest run; returns its id."""
    submission = Submission(
        id=new_ulid(now),
        team=team,
        project=project,
        manifest_path=manifest_path,
        manifest_sha256=manifest_sha256,
        job_count=job_count,
        created_at=now,
    )
    session.add(submission)
    session.flush()
    return submission.id


def plan_jobs(session: Session, submission_id: str, records: Sequence[Mapping], now: datetime) -> None:
    """Upsert the assets and jobs of `records` for `submission_id`.

    New job keys are inserted `planned`; a `failed` job goes back to `planned` (a re-run retries it);
    `done`, `planned` and `running` jobs are left as they are, so re-running a manifest never redoes work.
    """
    # 1. Check inputs before writing anything.
    if session.get(Submission, submission_id) is None:
        raise CatalogueError(f"submission {submission_id!r} does not exist (create_submission first)")
    unique: dict[str, Mapping] = {}
    for index, record in enumerate(records):
        validate_record(record, index)
        unique.setdefault(record["key"], record)
    _check_parents(session, list(unique.values()))
    if not unique:
        return
    # 2. Assets, then their primary keys.
    asset_ids = {(r["team"], r["project"], r["asset_id"]) for r in unique.values()}
    insert_ignoring_conflicts(
        session,
        Asset.__table__,
        [{"team": t, "project": p, "asset_id": a, "created_at": now} for t, p, a in sorted(asset_ids)],
        ("team", "project", "asset_id"),
    )
    asset_pks = _asset_pks(session, asset_ids)
    # 3. Jobs: insert new keys, send failed ones back to planned.
    rows = [
        {
            "key": key,
            "submission_id": submission_id,
            "asset_pk": asset_pks[(r["team"], r["project"], r["asset_id"])],
            "state": PLANNED,
            "attempts": 0,
            "record": as_json(r),
            "manifest_path": r.get("manifest_path"),
            "manifest_line": r.get("manifest_line"),
            "created_at": now,
            "updated_at": now,
        }
        for key, r in unique.items()
    ]
    insert_ignoring_conflicts(session, Job.__table__, rows, ("key",))
    for keys in chunked(list(unique)):
        session.execute(
            update(Job)
            .where(Job.key.in_(keys), Job.state == FAILED)
            .values(state=PLANNED, error=None, lease_owner=None, lease_expires_at=None,
                    submission_id=submission_id, updated_at=now)
        )


def _asset_pks(session: Session, asset_ids: set[tuple[str, str, str]]) -> dict[tuple[str, str, str], int]:
    found: dict[tuple[str, str, str], int] = {}
    by_project: dict[tuple[str, str], list[str]] = {}
    for team, project, asset_id in asset_ids:
        by_project.setdefault((team, project), []).append(asset_id)
    for (team, project), ids in by_project.items():
        for chunk in chunked(sorted(ids)):
            rows = session.execute(
                select(Asset.id, Asset.asset_id).where(
                    Asset.team == team, Asset.project == project, Asset.asset_id.in_(chunk)
                )
            )
            for pk, asset_id in rows:
                found[(team, project, asset_id)] = pk
    return found


def _check_parents(session: Session, records: Sequence[Mapping]) -> None:
    """A re-render must name a render that exists here; say which record names one that does not."""
    wanted = {r["parent_render_id"] for r in records if r.get("parent_render_id")}
    if not wanted:
        return
    known: set[str] = set()
    for chunk in chunked(sorted(wanted)):
        known.update(session.scalars(select(Render.id).where(Render.id.in_(chunk))))
    for index, record in enumerate(records):
        parent = record.get("parent_render_id")
        if parent and parent not in known:
            raise InvalidRecordError(
                f"{record_place(record, index)}: parent_render_id {parent!r} is not in the catalogue"
            )


# The statements every job runs (claim, lease renewal, done) are built once, as Core statements on
# the table: building an ORM UPDATE per call cost ~0.9 ms of CPU each, a tenth of a tiny job's whole
# claim-and-ingest (bench/job_cost_bench.py), on the cores that feed the GPU.
_jobs = Job.__table__
_NOW = bindparam("now", type_=_jobs.c.updated_at.type)  # typed: UTCDateTime stores UTC the same on both backends
_CLAIM = (
    update(_jobs)
    .where(
        _jobs.c.key == bindparam("job_key"),
        or_(
            _jobs.c.state.in_((PLANNED, FAILED)),
            and_(_jobs.c.state == RUNNING,
                 or_(_jobs.c.lease_expires_at < _NOW, _jobs.c.lease_owner == bindparam("worker"))),
        ),
    )
    .values(state=RUNNING, lease_owner=bindparam("worker"),
            lease_expires_at=bindparam("expires", type_=_jobs.c.lease_expires_at.type),
            attempts=_jobs.c.attempts + 1, error=None, updated_at=_NOW)
)
_MARK_DONE = (
    update(_jobs)
    .where(_jobs.c.key == bindparam("job_key"))
    .values(state=DONE, error=None, lease_owner=None, lease_expires_at=None,
            finished_at=_NOW, updated_at=_NOW)
)
_JOB_BY_KEY = select(Job).where(Job.key == bindparam("key"))


def require_job(session: Session, key: str) -> Job:
    """The job row for `key`; UnknownJobError when no plan recorded it."""
    job = session.scalar(_JOB_BY_KEY, {"key": key})
    if job is None:
        raise UnknownJobError(f"job {key!r} is not planned in this catalogue (plan_jobs first)")
    return job


def claim(session: Session, key: str, worker: str, lease_seconds: int, now: datetime) -> bool:
    """Lease job `key` to `worker` for `lease_seconds`; True when the lease is now `worker`'s.

    Claimable: planned, failed, running with an expired lease, or running under `worker`'s own lease
    (a renewal). Not claimable: done, or running under someone else's unexpired lease.
    """
    if lease_seconds <= 0:
        raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
    result = session.execute(_CLAIM, {"job_key": key, "worker": worker, "now": now,
                                      "expires": now + timedelta(seconds=lease_seconds)})
    if result.rowcount == 1:
        return True
    require_job(session, key)
    return False


class JobState(StrEnum):
    """A job's state, as the catalogue stores it (the same strings as `catalogue.models.JOB_STATES`)."""

    PLANNED = "planned"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def claimable(job: Mapping | None, now: datetime) -> bool:
    """Whether a run may take `job` (a `Catalogue.jobs()` row; None: not planned) at `now`: planned,
    failed, or running under a lease that expired before `now`.

    `claim` applies the same rule in SQL (`_CLAIM`); this reads it for a job already fetched, so the
    runs that watch jobs rather than claim them — a run waiting on another's leases (flows/waiting.py),
    the nightly run sending a dead shard's jobs out again (flows/shards.py) — decide as the claim
    will. A run's own lease (which `claim` renews) is not counted: watchers never hold the job.
    """
    if job is None:
        return False
    state = JobState(job["state"])
    if state in (JobState.PLANNED, JobState.FAILED):
        return True
    expires = job["lease_expires_at"]
    if state is not JobState.RUNNING or not expires:
        return False
    if isinstance(expires, str):
        expires = datetime.fromisoformat(expires)
    if expires.tzinfo is None:  # stored as UTC
        expires = expires.replace(tzinfo=timezone.utc)
    return expires < now


def fail_leased(session: Session, key: str, worker: str, reason: str, now: datetime) -> bool:
    """Mark job `key` failed with `reason` only while `worker` still holds its lease; True when written.

    What a run records about a job it rendered: if its lease was released meanwhile (the run went
    silent and another host took the job back), the job is no longer this run's to fail.
    """
    result = session.execute(
        update(Job)
        .where(Job.key == key, Job.state == RUNNING, Job.lease_owner == worker)
        .values(state=FAILED, error=reason[:REASON_LIMIT], lease_owner=None, lease_expires_at=None,
                finished_at=now, updated_at=now)
    )
    if result.rowcount == 1:
        return True
    require_job(session, key)
    return False


def fail(session: Session, key: str, reason: str, now: datetime) -> None:
    """Mark job `key` failed with `reason` and drop its lease; a job already done stays done."""
    result = session.execute(
        update(Job)
        .where(Job.key == key, Job.state != DONE)
        .values(state=FAILED, error=reason[:REASON_LIMIT], lease_owner=None, lease_expires_at=None,
                finished_at=now, updated_at=now)
    )
    if result.rowcount == 0:
        require_job(session, key)
        log.warning("job %s is done; not marking it failed (%s)", key, reason)


def mark_done(session: Session, key: str, now: datetime) -> None:
    """The job's render row is being written in this transaction: the job is done, its lease gone."""
    session.execute(_MARK_DONE, {"job_key": key, "now": now})


def replan(session: Session, keys: Sequence[str], now: datetime) -> None:
    """Send jobs back to planned whatever their state (their renders were forgotten for a forced re-run)."""
    for chunk in chunked(list(keys)):
        session.execute(
            update(Job)
            .where(Job.key.in_(chunk))
            .values(state=PLANNED, error=None, lease_owner=None, lease_expires_at=None, finished_at=None,
                    updated_at=now)
        )


def release_leases_of(session: Session, worker: str, now: datetime) -> list[str]:
    """Send every job leased by `worker` back to planned; returns their keys."""
    keys = list(session.scalars(select(Job.key).where(Job.state == RUNNING, Job.lease_owner == worker)))
    for chunk in chunked(keys):
        session.execute(
            update(Job)
            .where(Job.key.in_(chunk), Job.state == RUNNING, Job.lease_owner == worker)
            .values(state=PLANNED, lease_owner=None, lease_expires_at=None, updated_at=now)
        )
    return keys


def planned_of(session: Session, submission_ids: Sequence[str], limit: int, before: int | None = None) -> list[Job]:
    """Up to `limit` planned (never claimed) jobs of these submissions, last planned first; `before`
    (a job id) continues after the previous page."""
    query = select(Job).where(Job.submission_id.in_(list(submission_ids)), Job.state == PLANNED)
    if before is not None:
        query = query.where(Job.id < before)
    return list(session.scalars(query.order_by(Job.id.desc()).limit(limit)))


def job_states(session: Session, keys: Iterable[str]) -> dict[str, str]:
    """{key: state} for the keys that are planned here (unknown keys are left out)."""
    states: dict[str, str] = {}
    for chunk in chunked(sorted(set(keys))):
        for key, state in session.execute(select(Job.key, Job.state).where(Job.key.in_(chunk))):
            states[key] = state
    return states


def rendered_keys(session: Session, keys: Iterable[str]) -> set[str]:
    """The keys among `keys` that already have a render row."""
    found: set[str] = set()
    for chunk in chunked(sorted(set(keys))):
        found.update(session.scalars(select(Render.job_key).where(Render.job_key.in_(chunk))))
    return found


def expired_leases(session: Session, now: datetime) -> list[Job]:
    """Running jobs whose lease ran out: their worker died or stalled, and a run will take them again."""
    return list(session.scalars(
        select(Job).where(Job.state == RUNNING, Job.lease_expires_at < now).order_by(Job.lease_expires_at)
    ))


# -- whether a lease's owner is alive (see the module docstring) ---------------------------------------------

# A lease is taken for abandoned after this fraction of its length without a renewal, within bounds: long
# enough that a run's heartbeat (three per window) survives a slow database, short enough that a dead run's
# jobs come back in seconds, not after the lease (15 minutes by default).
SILENCE_FRACTION = 1 / 30
SILENCE_MIN_SECONDS, SILENCE_MAX_SECONDS = 3.0, 30.0
HEARTBEATS_PER_SILENCE = 3


def silence_seconds(lease_seconds: float) -> float:
    """How long a lease of `lease_seconds` may go unrenewed, while the database answers, before its owner is
    taken for gone: 30 s for the default 900 s lease."""
    return min(max(lease_seconds * SILENCE_FRACTION, SILENCE_MIN_SECONDS), SILENCE_MAX_SECONDS)


def heartbeat_seconds(lease_seconds: float) -> float:
    """How often a run renews the leases it holds (10 s for the default lease)."""
    return silence_seconds(lease_seconds) / HEARTBEATS_PER_SILENCE


@dataclass(frozen=True)
class LeaseSighting:
    """A running job's lease as read at one moment: who holds it, when they last renewed it, until when."""

    key: str
    owner: str
    renewed_at: datetime
    expires_at: datetime

    @property
    def lease_seconds(self) -> float:
        """The lease length its owner asked for at its last renewal."""
        return (self.expires_at - self.renewed_at).total_seconds()

    @property
    def silence_seconds(self) -> float:
        return silence_seconds(self.lease_seconds)

    def looks_silent(self, now: datetime) -> bool:
        """Not renewed for longer than its silence window (by this host's clock): worth watching."""
        return (now - self.renewed_at).total_seconds() > self.silence_seconds


def live_leases(session: Session, now: datetime, keys: Iterable[str] | None = None) -> list[LeaseSighting]:
    """The unexpired leases of running jobs (of `keys`, or all), as they are now."""
    query = select(Job.key, Job.lease_owner, Job.updated_at, Job.lease_expires_at).where(
        Job.state == RUNNING, Job.lease_owner.is_not(None), Job.lease_expires_at >= now)
    if keys is None:
        return [LeaseSighting(*row) for row in session.execute(query.order_by(Job.key))]
    found: list[LeaseSighting] = []
    for chunk in chunked(sorted(set(keys))):
        found.extend(LeaseSighting(*row) for row in session.execute(query.where(Job.key.in_(chunk))))
    return found


def renew_leases(session: Session, keys: Sequence[str], worker: str, lease_seconds: int, now: datetime) -> set[str]:
    """Renew `worker`'s leases on `keys` (its heartbeat); returns the keys it still holds.

    Unlike `claim`, a renewal never takes a job back and does not count as an attempt.
    """
    kept: set[str] = set()
    expires = now + timedelta(seconds=lease_seconds)
    for chunk in chunked(sorted(set(keys))):
        owned = and_(Job.key.in_(chunk), Job.state == RUNNING, Job.lease_owner == worker)
        result = session.execute(update(Job).where(owned).values(lease_expires_at=expires, updated_at=now))
        if result.rowcount == len(chunk):
            kept.update(chunk)
        elif result.rowcount:
            kept.update(session.scalars(select(Job.key).where(owned)))
    return kept


def release_unrenewed(session: Session, sighting: LeaseSighting, now: datetime) -> bool:
    """Send the job of `sighting` back to planned if its lease is still exactly as seen (same owner, same
    last renewal); True when released. A renewal in between makes this a no-op."""
    result = session.execute(
        update(Job)
        .where(Job.key == sighting.key, Job.state == RUNNING, Job.lease_owner == sighting.owner,
               Job.updated_at == sighting.renewed_at)
        .values(state=PLANNED, lease_owner=None, lease_expires_at=None, updated_at=now)
    )
    return result.rowcount == 1
