"""The `Catalogue`: the one object the flow, the CLI and (later) the gallery talk to.

It owns the engine, the object store and the clock, and it is the only place transactions begin
and end: every helper module (`jobs`, `intents`, `ingest`, `queries`, `check`) takes the session it
is handed. Each public method is one short unit of work, so SQLite's single writer is never held
while rendering, hashing or uploading.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from catalogue import check as checks
from catalogue import ingest as ingesting
from catalogue import intents, jobs, migrate, queries, schedules, submissions, tiles
from catalogue import repair as repairs
from catalogue.db import chunked, make_engine, make_sessionmaker
from catalogue.errors import IntentSweptError
from catalogue.ids import new_ulid, utcnow
from catalogue.models import FORGET, INGEST, Job, Render
from catalogue.store import ObjectStore, open_store

log = logging.getLogger(__name__)

# An intent younger than this whose worker still holds the job's lease may belong to an ingest still
# uploading; a sweep at run start leaves it alone. (Sweeping it anyway would be safe — that ingest then
# fails cleanly with IntentSweptError — but would waste its render.)
DEFAULT_SWEEP_GRACE_SECONDS = 900.0
# Asked once per ingest: built once (see catalogue.jobs for why the per-job statements are).
_RENDER_OF_JOB = select(Render.id).where(Render.job_key == bindparam("job_key"))


class Catalogue:
    """Submissions, jobs and renders in a database; their images in an object store; kept in step.

    Args:
        engine: SQLAlchemy engine of the catalogue database (see `catalogue.db.make_engine`).
        store: where PNGs and thumbnails go (see `catalogue.store.open_store`).
        clock: returns the current aware UTC time; tests pass a fake one to age leases and intents.
    """

    def __init__(self, engine: Engine, store: ObjectStore, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.store = store
        self.clock = clock
        self._sessions = make_sessionmaker(engine)

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, database_url: str, store_url: str, *, clock: Callable[[], datetime] = utcnow) -> Catalogue:
        """The catalogue at `database_url` (sqlite:/// or postgresql+psycopg://) with objects at `store_url`."""
        store = open_store(store_url)  # first: a bad store URL then leaves no engine behind
        return cls(make_engine(database_url), store, clock=clock)

    @classmethod
    def from_settings(cls, settings) -> Catalogue:
        """The catalogue the settings name (LINSTUDIO_DATABASE_URL / LINSTUDIO_STORE_URL, or the embedded
        default); the caller reads them (`linstudio_settings.get_settings()` at the edge)."""
        return cls.open(settings.resolved_database_url, settings.resolved_store_url)

    def migrate(self) -> None:
        """Bring the database to the newest schema (idempotent; safe when processes race on first use)."""
        migrate.upgrade(self.engine)

    def close(self) -> None:
        """Release database connections."""
        self.engine.dispose()

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commits when the block ends, rolls back if it raises.

        Public for callers that compose their own queries over the models (the gallery, tests); the
        session is handed to helpers, which never commit on their own.
        """
        with self._sessions.begin() as session:
            yield session

    # -- planning and leasing ----------------------------------------------------------------------

    def create_submission(self, team: str, project: str, manifest_path: str, manifest_sha256: str,
                          job_count: int) -> str:
        """Record one manifest run; returns the submission id."""
        with self.transaction() as session:
            return jobs.create_submission(session, team, project, manifest_path, manifest_sha256, job_count,
                                          self.clock())

    def queue_submission(self, team: str, project: str, manifest_path: str, manifest_sha256: str,
                         job_count: int, submitted_by: str) -> str:
        """Record a manifest submitted for the nightly batch (status queued); returns its id."""
        with self.transaction() as session:
            submission_id = jobs.create_submission(session, team, project, manifest_path, manifest_sha256,
                                                   job_count, self.clock())
            submissions.set_queued(session, submission_id, submitted_by)
            return submission_id

    def queue_manifest(self, team: str, project: str, manifest_path: str, manifest_sha256: str, job_count: int,
                       submitted_by: str) -> tuple[str, bool, list[str]]:
        """Queue a manifest for the nightly batch once: (submission id, newly queued?, superseded ids).

        If the same file with the same contents is already queued, that submission is returned and
        nothing is queued. Queued submissions of the same file with other contents (it was edited
        since) are cancelled: they would be refused tonight as changed, and this one replaces them.
        One transaction, serialised per path (`submissions.lock_manifest`), so two submits at once
        queue it once.
        """
        with self.transaction() as session:
            submissions.lock_manifest(session, manifest_path)
            queued = submissions.queued_for_manifest(session, manifest_path)
            same = [row.id for row in queued if row.manifest_sha256 == manifest_sha256]
            if same:
                return same[0], False, []
            superseded = [row.id for row in queued]
            for submission_id in superseded:
                submissions.transition(session, submission_id, "queued", "cancelled", self.clock())
            submission_id = jobs.create_submission(session, team, project, manifest_path, manifest_sha256,
                                                   job_count, self.clock())
            submissions.set_queued(session, submission_id, submitted_by)
            return submission_id, True, superseded

    def settle_submission(self, submission_id: str, job_keys: Sequence[str]) -> tuple[str, str | None] | None:
        """Finish a submission a run left `running` from its jobs' states (see `submissions.settle`):
        (status, error) when settled, None when left running."""
        with self.transaction() as session:
            return submissions.settle(session, submission_id, job_keys, self.clock())

    def start_submission(self, submission_id: str) -> bool:
        """queued -> running, atomically; False when it was not queued (cancelled, or taken by another run)."""
        with self.transaction() as session:
            return submissions.transition(session, submission_id, "queued", "running", self.clock())

    def cancel_submission(self, submission_id: str) -> bool:
        """queued -> cancelled; False when it was no longer queued (running or finished)."""
        with self.transaction() as session:
            return submissions.transition(session, submission_id, "queued", "cancelled", self.clock())

    def finish_submission(self, submission_id: str, status: str, error: str | None) -> None:
        """Record how a running submission ended: done, or failed with why."""
        with self.transaction() as session:
            submissions.finish(session, submission_id, status, error, self.clock())

    def submission_job_keys(self, submission_id: str) -> list[str]:
        """The keys of the jobs planned under a submission."""
        with self.transaction() as session:
            return list(session.scalars(select(Job.key).where(Job.submission_id == submission_id)))

    def submissions(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Submissions newest first, with their status and job counts by state."""
        with self.transaction() as session:
            return submissions.listing(session, status, limit)

    def plan_jobs(self, submission_id: str, records: Sequence[Mapping]) -> None:
        """Upsert assets and jobs for job records (`JobSpec.to_record()`); done jobs stay done, failed ones are planned again."""
        with self.transaction() as session:
            jobs.plan_jobs(session, submission_id, records, self.clock())

    def rendered_keys(self, keys: Iterable[str]) -> set[str]:
        """The job keys among `keys` that already have a render."""
        with self.transaction() as session:
            return jobs.rendered_keys(session, keys)

    def job_states(self, keys: Iterable[str]) -> dict[str, str]:
        """{job key: planned | running | done | failed} for the keys known here."""
        with self.transaction() as session:
            return jobs.job_states(session, keys)

    def job(self, job_key: str) -> dict[str, Any] | None:
        """One job's state, lease, attempts and failure reason, or None."""
        return self.jobs([job_key]).get(job_key)

    def jobs(self, job_keys: list[str]) -> dict[str, dict[str, Any]]:
        """`job` for many keys in a few queries (a shard of hundreds); keys not planned are absent."""
        found: dict[str, dict[str, Any]] = {}
        with self.transaction() as session:
            for start in range(0, len(job_keys), 500):  # bounded IN lists
                for job in session.scalars(select(Job).where(Job.key.in_(job_keys[start:start + 500]))):
                    found[job.key] = {
                        "key": job.key, "state": job.state, "lease_owner": job.lease_owner,
                        "lease_expires_at": job.lease_expires_at.isoformat() if job.lease_expires_at else None,
                        "attempts": job.attempts, "error": job.error, "submission_id": job.submission_id,
                        "record": dict(job.record or {})}
        return found

    def planned_jobs(self, submission_ids: Sequence[str], limit: int = 100, before: int | None = None) -> list[dict[str, Any]]:
        """Planned jobs of these submissions that nobody has claimed yet, last planned first, a page at a
        time (pass the last one's `id` as `before`): what a shard done with its own jobs can help with."""
        with self.transaction() as session:
            return [{"id": job.id, "key": job.key, "record": dict(job.record or {})}
                    for job in jobs.planned_of(session, submission_ids, limit, before)]

    def claim(self, job_key: str, worker: str, lease_seconds: int) -> bool:
        """Lease a planned, failed or expired job to `worker`; False if done or leased by someone else."""
        with self.transaction() as session:
            return jobs.claim(session, job_key, worker, lease_seconds, self.clock())

    def fail(self, job_key: str, reason: str) -> None:
        """Mark a job failed with `reason` (a done job stays done)."""
        with self.transaction() as session:
            jobs.fail(session, job_key, reason, self.clock())

    def fail_leased(self, job_key: str, worker: str, reason: str) -> bool:
        """Mark a job failed with `reason` only while `worker` holds its lease; True when written."""
        with self.transaction() as session:
            return jobs.fail_leased(session, job_key, worker, reason, self.clock())

    def renew_leases(self, job_keys: Sequence[str], worker: str, lease_seconds: int) -> set[str]:
        """A run's heartbeat: renew `worker`'s leases on `job_keys`; returns the keys it still holds."""
        if not job_keys:
            return set()
        with self.transaction() as session:
            return jobs.renew_leases(session, job_keys, worker, lease_seconds, self.clock())

    def lease_sightings(self, job_keys: Iterable[str] | None = None) -> list[jobs.LeaseSighting]:
        """The unexpired leases of running jobs (of `job_keys`, or all), as they are now."""
        with self.transaction() as session:
            return jobs.live_leases(session, self.clock(), job_keys)

    def release_silent_leases(self, job_keys: Iterable[str] | None = None, skip_owners: Sequence[str] = (),
                              sleep: Callable[[float], None] | None = None,
                              watch_fresh: bool = False) -> list[repairs.RepairAction]:
        """Release the unexpired leases whose owners have gone silent, after watching them for their silence
        window (see `catalogue.repair.release_silent_leases`); returns what was released. Returns at once
        when no lease looks silent (unless `watch_fresh`)."""
        kwargs = {} if sleep is None else {"sleep": sleep}
        return repairs.release_silent_leases(self, job_keys, skip_owners, watch_fresh=watch_fresh, **kwargs)

    def lease_owners(self) -> set[str]:
        """Who holds the leases of running jobs (expired or not): lets a starting run find its dead predecessors."""
        with self.transaction() as session:
            return set(session.scalars(select(Job.lease_owner).where(Job.state == "running",
                                                                     Job.lease_owner.is_not(None)).distinct()))

    def release_dead_leases(self, worker: str) -> list[str]:
        """Send the jobs leased by `worker` back to planned, and sweep its unfinished ingests; returns the keys.

        For a run starting under a worker name whose previous process died: its leases are dead even
        though they have not expired, and so are the upload intents it left (they no longer match a
        live lease, so `sweep_intents` takes them). Only correct when no other live process uses the
        same worker name.
        """
        with self.transaction() as session:
            keys = jobs.release_leases_of(session, worker, self.clock())
        self.sweep_intents()
        return keys

    # -- ingest --------------------------------------------------------------------------------------

    def ingest(self, job_key: str, png_bytes: bytes, record: Mapping, worker: str, made_by: str | None = None) -> str:
        """Catalogue a finished render of `job_key`; returns its render id.

        The PNG gets the A1111 `parameters` text and the JSON record embedded, and a WebP thumbnail.
        Object and row land together or not at all:
        an intent is committed before anything is uploaded, and one transaction inserts the row,
        marks the job done and removes the intent. On any failure the uploaded objects are deleted
        (or, if that fails too, left to `sweep_intents` through the intent). Idempotent: a job that
        already has a render returns that render's id and uploads nothing.
        """
        now = self.clock()
        # 1. Already catalogued? Then there is nothing to do.
        with self.transaction() as session:
            existing = session.scalar(_RENDER_OF_JOB, {"job_key": job_key})
            if existing is not None:
                return existing
            job = jobs.require_job(session, job_key)
        # 2. Prepare the objects (CPU work, outside any transaction).
        # `worker` is the lease owner (intents are checked against it); `made_by` is the name the
        # render row records (a worker's name without its process id), defaulting to `worker`.
        artifacts = ingesting.prepare(job, png_bytes, record, made_by or worker, new_ulid(now), now)
        # 3. Record the intent before touching the store.
        with self.transaction() as session:
            intent_id = intents.open_intent(session, job_key, INGEST, artifacts.keys, worker, self.clock())
        # 4. Upload.
        try:
            ingesting.upload(self.store, artifacts)
        except Exception:
            self._compensate(intent_id, artifacts.keys)
            raise
        # 5. Row, job and intent in one transaction.
        try:
            with self.transaction() as session:
                intents.close_intent(session, intent_id)
                ingesting.insert_render(session, job, artifacts, self.store, made_by or worker, now)
                jobs.mark_done(session, job_key, now)
        except IntentSweptError:
            # The sweep deleted what was uploaded when it ran, but an upload still in progress then may
            # have landed after it: clean up under a new intent of our own, then report the loss.
            self._compensate_without_intent(job_key, artifacts.keys, worker)
            raise
        except IntegrityError:
            winner = self._render_id_of(job_key)
            self._compensate(intent_id, artifacts.keys)
            if winner is not None:  # another worker catalogued this job first: theirs stands
                log.info("job %s was catalogued meanwhile as render %s; discarding this copy", job_key, winner)
                return winner
            raise
        except Exception:
            self._compensate(intent_id, artifacts.keys)
            raise
        return artifacts.render_id

    def _render_id_of(self, job_key: str) -> str | None:
        with self.transaction() as session:
            return session.scalar(_RENDER_OF_JOB, {"job_key": job_key})

    def _compensate_without_intent(self, job_key: str, object_keys: Sequence[str], worker: str) -> None:
        """`_compensate` for objects whose intent is gone: record a fresh one first, so a crash here is swept too."""
        try:
            with self.transaction() as session:
                intent_id = intents.open_intent(session, job_key, INGEST, object_keys, worker, self.clock())
        except Exception as exc:
            log.warning("could not record a clean-up intent for %s: %s: %s", ", ".join(object_keys),
                        type(exc).__name__, str(exc).partition("\n")[0], exc_info=log.isEnabledFor(logging.DEBUG))
            return
        self._compensate(intent_id, object_keys)

    def _compensate(self, intent_id: int, object_keys: Sequence[str]) -> None:
        """Undo a failed ingest: delete its objects, then its intent. If either step fails, the intent
        stays and `sweep_intents` finishes the job later; the original error is what the caller sees."""
        try:
            with self.transaction() as session:
                keep = intents.referenced_keys(session, object_keys)
            intents.delete_objects(self.store, object_keys, keep)
            with self.transaction() as session:
                intents.drop_intent(session, intent_id)
        except Exception as exc:
            # One line, not a traceback: this fires on every failed attempt while a service is down
            # (a 5 s S3 blink printed ~800 lines of chained tracebacks into a run's log).
            log.warning("could not undo upload intent %s (%s); sweep_intents will: %s: %s", intent_id,
                        ", ".join(object_keys), type(exc).__name__, str(exc).partition("\n")[0],
                        exc_info=log.isEnabledFor(logging.DEBUG))

    # -- repair and removal ------------------------------------------------------------------------

    def sweep_intents(self, grace_seconds: float | None = None) -> list[str]:
        """Finish what failed or killed ingests left: delete objects no row references, drop the intents.

        Called when a run starts. An intent is swept when its worker no longer holds the job's lease
        (the job failed, was released, expired or went to another worker), or once it is older than
        `grace_seconds` (default DEFAULT_SWEEP_GRACE_SECONDS) whatever the lease says; an ingest in
        flight under a live lease is left to finish. `grace_seconds=0` sweeps every intent. Returns
        one line per intent saying what was done.
        """
        grace = DEFAULT_SWEEP_GRACE_SECONDS if grace_seconds is None else grace_seconds
        now = self.clock()
        with self.transaction() as session:
            due = intents.due_for_sweep(session, now, grace)
        actions = []
        for intent in due:
            with self.transaction() as session:
                if not intents.start_sweeping(session, intent.id):
                    continue  # its ingest committed, or another sweep finished it
                keep = intents.referenced_keys(session, intent.object_keys)
            deleted = intents.delete_objects(self.store, intent.object_keys, keep)
            with self.transaction() as session:
                intents.drop_intent(session, intent.id)
            what = f"deleted {', '.join(deleted)}" if deleted else "no objects to delete"
            actions.append(f"{intent.purpose} intent {intent.id} (job {intent.job_key}, {intent.worker}): {what}")
            log.info("swept %s", actions[-1])
        return actions

    def forget_renders(self, job_keys: Iterable[str]) -> list[str]:
        """Delete the renders of `job_keys` (rows, then objects) and plan their jobs again, for a forced
        re-run; returns the forgotten render ids. Re-renders that named them as parent keep a NULL parent.

        The rows go in one transaction that also records delete intents, so objects whose deletion fails
        or is interrupted are removed by the next `sweep_intents`.
        """
        keys = sorted(set(job_keys))
        now = self.clock()
        forgotten: list[tuple[str, str, int, list[str]]] = []  # (render id, job key, intent id, object keys)
        pyramid_of: list[str] = []  # the PNG keys of forgotten renders big enough for a deep-zoom pyramid
        with self.transaction() as session:
            for chunk in chunked(keys):
                for render in session.scalars(select(Render).where(Render.job_key.in_(chunk))):
                    object_keys = [render.object_key, render.thumb_key]
                    intent_id = intents.open_intent(session, render.job_key, FORGET, object_keys, None, now)
                    forgotten.append((render.id, render.job_key, intent_id, object_keys))
                    if tiles.needs_pyramid(render.width, render.height):
                        pyramid_of.append(render.object_key)
            for chunk in chunked([render_id for render_id, _, _, _ in forgotten]):
                session.execute(delete(Render).where(Render.id.in_(chunk)))
            jobs.replan(session, [job_key for _, job_key, _, _ in forgotten], now)
        for _, _, intent_id, object_keys in forgotten:
            self._compensate(intent_id, object_keys)
        for object_key in pyramid_of:  # a crash before this leaves an orphan pyramid: `catalogue check` finds it
            tiles.delete(self.store, object_key)
        return [render_id for render_id, _, _, _ in forgotten]

    # -- reading --------------------------------------------------------------------------------------

    def renders(self, team: str | None = None, project: str | None = None, limit: int = 100,
                after: str | None = None) -> list[dict[str, Any]]:
        """Renders newest first (keyset-paged: pass the last render_id as `after` for the next page)."""
        with self.transaction() as session:
            return queries.list_renders(session, team, project, limit, after)

    def render(self, render_id: str) -> dict[str, Any] | None:
        """One render with its full record, or None."""
        with self.transaction() as session:
            return queries.get_render(session, render_id)

    # -- scheduled re-renders (catalogue.schedules) ---------------------------------------------
    def add_schedule(self, record: schedules.ScheduleRecord) -> None:
        """Record a new schedule; DuplicateSchedule when the name is taken."""
        with self.transaction() as session:
            schedules.add(session, record, self.clock())

    def schedules(self) -> list[schedules.ScheduleRecord]:
        with self.transaction() as session:
            return schedules.list_all(session)

    def schedule(self, name: str) -> schedules.ScheduleRecord | None:
        with self.transaction() as session:
            return schedules.get(session, name)

    def set_schedule_active(self, name: str, active: bool, *, synced: bool) -> schedules.ScheduleRecord:
        """Pause (False) or resume; `synced=False` leaves telling Prefect to `flows`."""
        with self.transaction() as session:
            return schedules.set_active(session, name, active, synced=synced)

    def request_schedule_run(self, name: str) -> schedules.ScheduleRecord:
        with self.transaction() as session:
            return schedules.request_run(session, name, self.clock())

    def pending_schedules(self) -> list[schedules.ScheduleRecord]:
        with self.transaction() as session:
            return schedules.pending(session)

    def mark_schedule_synced(self, name: str, *, active: bool, run_requested_at: datetime | None,
                             next_run_at: datetime | None) -> None:
        with self.transaction() as session:
            schedules.mark_synced(session, name, active=active, run_requested_at=run_requested_at,
                                  next_run_at=next_run_at)

    def set_schedule_next_run(self, name: str, next_run_at: datetime | None) -> None:
        with self.transaction() as session:
            schedules.set_next_run(session, name, next_run_at)

    def record_schedule_run(self, name: str, run: schedules.LastRun) -> None:
        with self.transaction() as session:
            schedules.record_run(session, name, run)

    def remove_schedule(self, name: str) -> None:
        """Forget a schedule; the re-renders it made stay."""
        with self.transaction() as session:
            schedules.remove(session, name)

    def schedule_sources(self, name: str | None, selection: schedules.Selection) -> list[str]:
        """The render ids a run of schedule `name` re-renders now (its selection less its own
        re-renders; None: a re-render asked for by hand, the whole selection)."""
        with self.transaction() as session:
            return schedules.source_render_ids(session, name, selection)

    def schedules_selecting(self, render_id: str) -> list[str]:
        """The names of the schedules that would re-render `render_id` if they ran now."""
        with self.transaction() as session:
            return schedules.selecting(session, render_id)

    def check(self, verify_hashes: bool = True) -> checks.CheckReport:
        """Compare rows and objects (see `catalogue.check`); `.ok` when consistent. Changes nothing."""
        listed = checks.list_objects(self.store)
        with self.transaction() as session:
            rows = checks.snapshot(session, self.clock())
        return checks.inspect(self.store, listed, rows, verify_hashes)

    def repair(self, verify_hashes: bool = True,
               orphan_grace_seconds: float = repairs.DEFAULT_ORPHAN_GRACE_SECONDS) -> repairs.RepairReport:
        """Repair what `check` finds, then check again; `.ok` when the catalogue is consistent after it.

        Orphan objects younger than `orphan_grace_seconds` (by the store's clock) are left for a later
        repair; objects an unfinished upload intent names are never touched. See `catalogue.repair`
        for what each repair does and why it is safe beside a running batch.
        """
        return repairs.repair(self, verify_hashes, orphan_grace_seconds)
