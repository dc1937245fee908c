"""The catalogue's tables, as SQLAlchemy 2 declarative models.

What exists and how it came to be: a *submission* is one manifest run; it plans *jobs* (one per
render the manifest asks for, unique by job key) for *assets* (team, project, asset id); a job
that succeeds gets exactly one *render* (the PNG, its thumbnail and every setting that made it).
An *upload intent* is written before objects are uploaded (or deleted) and removed in the same
transaction that makes them official, so a crash at any point leaves a trail a sweep can follow.

The schema is changed only through Alembic migrations in `catalogue/migrations`; a test checks
these models and the migrations agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Job states. A job moves planned -> running (leased) -> done | failed; failed and expired-running
# jobs may be claimed again.
PLANNED, RUNNING, DONE, FAILED = "planned", "running", "done", "failed"
JOB_STATES = (PLANNED, RUNNING, DONE, FAILED)

# Upload-intent purposes and states.
INGEST, FORGET = "ingest", "forget"
OPEN, SWEEPING = "open", "sweeping"

ID_LEN = 26  # a ULID (catalogue.ids)
KEY_LEN = 128  # job keys are content hashes; room to spare
NAME_LEN = 200  # team, project, asset id, model names, worker names


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend.

    PostgreSQL stores `timestamptz`; SQLite has no time zones and would hand back naive values,
    which compare wrongly against aware ones. Values are normalised to UTC on the way in and come
    back aware in UTC on the way out, so lease arithmetic is the same everywhere.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the catalogue stores aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSON everywhere; JSONB on PostgreSQL so later gallery queries (tags, engine metadata) can index it.
JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with deterministic constraint names (Alembic needs them to alter later)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


class Submission(Base):
    """One manifest run: which file (and which version of it) asked for how many jobs."""

    __tablename__ = "submissions"

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    team: Mapped[str] = mapped_column(String(NAME_LEN))
    project: Mapped[str] = mapped_column(String(NAME_LEN))
    manifest_path: Mapped[str] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    job_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(index=True)
    # queued (in the inbox) -> running -> done | failed (with `error`); queued -> cancelled.
    status: Mapped[str] = mapped_column(String(16), default="running", server_default="done")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    submitted_by: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)

    __table_args__ = (
        Index("ix_submissions_team_project_created_at", "team", "project", "created_at"),
        Index("ix_submissions_status_created_at", "status", "created_at"),
        CheckConstraint("status IN ('queued', 'running', 'done', 'failed', 'cancelled')",
                        name="status"),
    )


class Asset(Base):
    """A thing a team produces renders of, named by (team, project, asset id) in its manifests."""

    __tablename__ = "assets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    team: Mapped[str] = mapped_column(String(NAME_LEN))
    project: Mapped[str] = mapped_column(String(NAME_LEN))
    asset_id: Mapped[str] = mapped_column(String(NAME_LEN))
    created_at: Mapped[datetime]

    __table_args__ = (UniqueConstraint("team", "project", "asset_id"),)


class Job(Base):
    """One render a manifest asks for, unique by its content-derived key, with its lease."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(KEY_LEN), unique=True)
    submission_id: Mapped[str] = mapped_column(ForeignKey("submissions.id"), index=True)
    asset_pk: Mapped[int] = mapped_column(ForeignKey("assets.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    lease_owner: Mapped[str | None] = mapped_column(String(NAME_LEN))
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    record: Mapped[dict[str, Any]]
    manifest_path: Mapped[str | None] = mapped_column(Text)
    manifest_line: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(f"state IN {JOB_STATES!r}", name="state"),
        Index("ix_jobs_state_lease_expires_at", "state", "lease_expires_at"),
    )


class Render(Base):
    """A finished render: where its objects are, their checksums, and every setting that made it."""

    __tablename__ = "renders"

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    job_key: Mapped[str] = mapped_column(ForeignKey("jobs.key"), unique=True)
    submission_id: Mapped[str | None] = mapped_column(ForeignKey("submissions.id"), index=True)
    asset_pk: Mapped[int] = mapped_column(ForeignKey("assets.id"), index=True)
    team: Mapped[str] = mapped_column(String(NAME_LEN))
    project: Mapped[str] = mapped_column(String(NAME_LEN))
    asset_id: Mapped[str] = mapped_column(String(NAME_LEN))
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    seed: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int | None] = mapped_column(Integer)
    guidance: Mapped[float | None] = mapped_column(Float)
    scheduler: Mapped[str | None] = mapped_column(String(NAME_LEN))
    model: Mapped[str] = mapped_column(String(NAME_LEN), index=True)
    model_identity: Mapped[str | None] = mapped_column(String(NAME_LEN))
    engine: Mapped[dict[str, Any]]
    timings: Mapped[dict[str, Any]]
    tags: Mapped[list[Any]]
    record: Mapped[dict[str, Any]]
    worker: Mapped[str] = mapped_column(String(NAME_LEN))
    object_key: Mapped[str] = mapped_column(Text)
    object_uri: Mapped[str] = mapped_column(Text)
    thumb_key: Mapped[str] = mapped_column(Text)
    thumb_uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    thumb_sha256: Mapped[str] = mapped_column(String(64))
    parent_render_id: Mapped[str | None] = mapped_column(ForeignKey("renders.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    # The latest review decision (catalogue.review keeps it in step with `reviews`), NULL = not reviewed;
    # a column rather than a join so the gallery's status filter is one index range (migration 0002).
    review_status: Mapped[str | None] = mapped_column(String(24))

    __table_args__ = (
        Index("ix_renders_team_project_id", "team", "project", "id"),
        # Gallery filters, each ending in `id` so "filter, newest first, after cursor" is one index range.
        Index("ix_renders_team_id", "team", "id"),
        Index("ix_renders_project_id", "project", "id"),
        Index("ix_renders_model_id", "model", "id"),
        Index("ix_renders_review_status_id", "review_status", "id"),
        Index("ix_renders_width_height_id", "width", "height", "id"),
        Index("ix_renders_asset_pk_id", "asset_pk", "id"),
    )


class UploadIntent(Base):
    """Objects about to be uploaded (ingest) or deleted (forget), written before the store is touched.

    An ingest removes its intent in the transaction that inserts the render row; a forget removes it
    once the objects are gone. Any intent still here after a grace period belongs to a process that
    died or failed half-way, and `sweep_intents` finishes the job: objects no render row references
    are deleted. `state` turns to `sweeping` before a sweep deletes anything, and an ingest only
    commits if it can still remove its intent while `open` — so a slow ingest and a sweep can never
    both win.
    """

    __tablename__ = "upload_intents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_key: Mapped[str] = mapped_column(String(KEY_LEN), index=True)
    purpose: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    object_keys: Mapped[list[Any]]
    worker: Mapped[str | None] = mapped_column(String(NAME_LEN))
    created_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint(f"purpose IN {(INGEST, FORGET)!r}", name="purpose"),
        CheckConstraint(f"state IN {(OPEN, SWEEPING)!r}", name="state"),
        Index("ix_upload_intents_state_created_at", "state", "created_at"),
    )


# --- the gallery (migration 0002): tags as rows, reviews, people and API tokens --------------------

# Review decisions.
APPROVED, REJECTED, CHANGES_REQUESTED = "approved", "rejected", "changes_requested"
REVIEW_STATUSES = (APPROVED, REJECTED, CHANGES_REQUESTED)


class RenderTag(Base):
    """One tag of one render, kept by database triggers from `renders.tags` (migration 0002).

    The JSON list stays the record; this table exists so "tag = night, newest first" is an index
    range on both backends instead of a scan of every render's JSON.
    """

    __tablename__ = "render_tags"

    tag: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    render_id: Mapped[str] = mapped_column(ForeignKey("renders.id", ondelete="CASCADE"), primary_key=True,
                                           index=True)


class Review(Base):
    """One review decision on a render: never updated, so the history of who decided what stays."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    render_id: Mapped[str] = mapped_column(ForeignKey("renders.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(24))
    note: Mapped[str] = mapped_column(Text, default="")
    reviewer: Mapped[str] = mapped_column(String(NAME_LEN))
    created_at: Mapped[datetime]

    __table_args__ = (
        CheckConstraint(f"status IN {REVIEW_STATUSES!r}", name="status"),
        Index("ix_reviews_render_id_id", "render_id", "id"),
    )


class User(Base):
    """Someone who signs in to the gallery; the password is stored as a scrypt hash (catalogue.auth)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    # Set by `linstudio users disable` (migration 0004): sign-in and existing sessions are refused.
    disabled_at: Mapped[datetime | None] = mapped_column(nullable=True)


class ApiToken(Base):
    """A script's bearer token, stored as its SHA-256 (the token itself is shown once, at creation)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    # Set by `linstudio tokens revoke` (migration 0004). The row stays so the name is never reused:
    # review history's `token:NAME` keeps meaning one token.
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


# --- hardening (migration 0004): sign-in back-off and background exports ---------------------------

# Export states: queued -> running -> done | failed (a running export whose lease expired is queued again).
EXPORT_QUEUED, EXPORT_RUNNING, EXPORT_DONE, EXPORT_FAILED = "queued", "running", "done", "failed"
EXPORT_STATES = (EXPORT_QUEUED, EXPORT_RUNNING, EXPORT_DONE, EXPORT_FAILED)


class SignInFailure(Base):
    """Failed sign-ins in a row for one account name or one client address (catalogue.web.throttle).

    Kept in the database rather than in a gallery process's memory so every gallery process behind
    a load balancer sees the same count: an attacker cannot multiply their guesses by the number of
    processes. `key` is `account:NAME` or `address:IP`.
    """

    __tablename__ = "sign_in_failures"

    key: Mapped[str] = mapped_column(String(NAME_LEN + 16), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failure_at: Mapped[datetime] = mapped_column(index=True)


class Export(Base):
    """A delivery asked for in the gallery, run in the background by an export worker (catalogue.web.exports).

    `active_key` is the selection's hash while the export is queued or running and NULL after, and
    it is unique: a second request for the same selection finds the first instead of starting
    another. `worker` and `lease_expires_at` say who runs it; a lease that runs out (a gallery
    process died) lets another worker take it over.
    """

    __tablename__ = "exports"

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    selection_sha256: Mapped[str] = mapped_column(String(64))
    active_key: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[str] = mapped_column(String(NAME_LEN))
    destination: Mapped[str] = mapped_column(Text)
    options: Mapped[dict[str, Any]]
    render_ids: Mapped[list[Any]]
    total: Mapped[int] = mapped_column(Integer)
    done: Mapped[int] = mapped_column(Integer, default=0)
    written: Mapped[list[Any] | None] = mapped_column(nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)

    __table_args__ = (
        CheckConstraint(f"state IN {EXPORT_STATES!r}", name="state"),
        Index("ix_exports_state_lease_expires_at", "state", "lease_expires_at"),
    )


# Rerender-request states: written `queued` by the gallery, `claimed` by a dispatcher while it
# starts the jobs (a claim older than the dispatcher's stale window is taken over), then `started`.
REQUEST_QUEUED, REQUEST_CLAIMED, REQUEST_STARTED = "queued", "claimed", "started"
REQUEST_STATES = (REQUEST_QUEUED, REQUEST_CLAIMED, REQUEST_STARTED)
REQUEST_KINDS = ("rerender", "retry")


class RerenderRequest(Base):
    """Planned jobs the gallery asks to have started in the background (catalogue.rerender_requests).

    The gallery plans re-renders and retries in the catalogue and writes one of these rather than
    starting a render itself, so it needs nothing from orchestration and a request survives a web
    restart: a dispatcher in `flows` (started by `linstudio serve`) claims it and starts the jobs.
    `kind` says which button asked (`rerender` or `retry`), for the log and for people.
    """

    __tablename__ = "rerender_requests"

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    job_keys: Mapped[list[Any]]
    requested_by: Mapped[str] = mapped_column(String(NAME_LEN))
    state: Mapped[str] = mapped_column(String(16))
    claimed_by: Mapped[str | None] = mapped_column(String(NAME_LEN), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)

    __table_args__ = (
        CheckConstraint(f"state IN {REQUEST_STATES!r}", name="state"),
        CheckConstraint(f"kind IN {REQUEST_KINDS!r}", name="kind"),
        Index("ix_rerender_requests_state_created_at", "state", "created_at"),
    )


class Schedule(Base):
    """A named, recurring (or one-off) re-render: which renders, at which sizes, when (catalogue.schedules).

    Prefect runs it (a schedule of the `rerender` deployment, with these parameters); this row is
    what the studio asked for, so the gallery can list it, a render can say which schedules select
    it, and every re-render a run makes points back to it by name. `active` is the wanted state:
    whoever changes it (the CLI, a signed-in gallery user) sets `sync_pending`, and `flows` tells
    Prefect and clears it. `run_requested_at` asks for one run now. `next_run_at` and the `last_*`
    columns are what Prefect and the last run reported, kept here for the gallery.
    """

    __tablename__ = "schedules"

    name: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    selection: Mapped[dict[str, Any]]
    sizes: Mapped[list[Any]]
    cron: Mapped[str | None] = mapped_column(String(200), nullable=True)
    run_at: Mapped[datetime | None] = mapped_column(nullable=True)
    timezone: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean)
    sync_pending: Mapped[bool] = mapped_column(Boolean)
    run_requested_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_by: Mapped[str] = mapped_column(String(NAME_LEN))
    created_at: Mapped[datetime]
    next_run_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_run_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_run_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_made: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_skipped: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_failed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_flow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (
        CheckConstraint("(cron IS NULL) <> (run_at IS NULL)", name="cron_or_run_at"),
    )
