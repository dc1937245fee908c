"""Scheduled re-renders in the catalogue: what each schedule selects, when it runs, how its last run went.

A schedule re-renders a *selection* (render ids, or every render of a team / project / tag /
review status, evaluated at each run so renders added later are included) at one or more sizes,
on a cron or once at a time. Prefect runs it (a schedule of the `rerender` deployment, `flows`
keeps the two in step); the catalogue holds the studio's record of it so the gallery can list
schedules and say which select a render, without importing orchestration.

Two rules keep a schedule from feeding on itself: a render this schedule made is never one of its
sources (its tags would otherwise select it again, a generation more each run), and a source
already at a target size is not re-rendered at that size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from catalogue.models import REVIEW_STATUSES, Render, RenderTag, Schedule

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
RUN_STATES = ("running", "completed", "failed")


class ScheduleError(ValueError):
    """A schedule that cannot be recorded or found; the message names the field or the schedule."""


class DuplicateSchedule(ScheduleError):
    """A schedule of that name exists already."""


class UnknownSchedule(ScheduleError, LookupError):
    """No schedule has that name."""


@dataclass(frozen=True)
class Selection:
    """Which renders a schedule re-renders: by id, or all that match every filter given.

    `status` is a review status (`approved` ...): artists approve, TDs schedule.
    """

    render_ids: tuple[str, ...] = ()
    team: str | None = None
    project: str | None = None
    tag: str | None = None
    status: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "render_ids", tuple(self.render_ids))
        if not (self.render_ids or self.team or self.project or self.tag or self.status):
            raise ScheduleError("selection: choose renders with --render, --team, --project, --tag or --status")
        if self.render_ids and (self.team or self.project or self.tag or self.status):
            raise ScheduleError("selection: --render names renders itself; it does not combine with filters")
        if self.status is not None and self.status not in REVIEW_STATUSES:
            raise ScheduleError(f"selection.status: {self.status!r} is not a review status; "
                                f"use one of {', '.join(REVIEW_STATUSES)}")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"render_ids": list(self.render_ids)} if self.render_ids else {}
        for name in ("team", "project", "tag", "status"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Selection:
        return cls(tuple(data.get("render_ids") or ()), data.get("team"), data.get("project"), data.get("tag"),
                   data.get("status"))

    def describe(self) -> str:
        """One line for people: `team film, status approved` or `renders 01J..., 01J...`."""
        if self.render_ids:
            return "renders " + ", ".join(self.render_ids)
        return ", ".join(f"{name} {value}" for name, value in self.to_json().items())


@dataclass(frozen=True)
class LastRun:
    """What the last run of a schedule did (renders made, already there, failed)."""

    at: datetime
    state: str
    made: int | None = None
    skipped: int | None = None
    failed: int | None = None
    flow_run_id: str | None = None


@dataclass(frozen=True)
class ScheduleRecord:
    """A schedule as the catalogue holds it. Exactly one of `cron` and `run_at` is set."""

    name: str
    selection: Selection
    sizes: tuple[str, ...]
    timezone: str
    cron: str | None = None
    run_at: datetime | None = None
    active: bool = True
    created_by: str = ""
    created_at: datetime | None = None
    sync_pending: bool = False
    run_requested_at: datetime | None = None
    next_run_at: datetime | None = None
    last_run: LastRun | None = None

    @property
    def when(self) -> str:
        """`cron 0 2 * * 0` or `at 2026-12-07T02:00:00+00:00`."""
        return f"cron {self.cron}" if self.cron else f"at {self.run_at.isoformat()}"

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-able data (what `linstudio schedules ls --json` and the API show)."""
        last = self.last_run
        return {
            "name": self.name, "selection": self.selection.to_json(), "selection_text": self.selection.describe(),
            "sizes": list(self.sizes), "cron": self.cron, "at": self.run_at.isoformat() if self.run_at else None,
            "timezone": self.timezone, "active": self.active, "created_by": self.created_by,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "next_run": self.next_run_at.isoformat() if self.next_run_at else None,
            "last_run": None if last is None else {
                "at": last.at.isoformat(), "state": last.state, "made": last.made, "skipped": last.skipped,
                "failed": last.failed, "flow_run_id": last.flow_run_id},
        }


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise ScheduleError(f"name {name!r}: lower-case letters, digits, '.', '-' and '_', at most 64, "
                            "starting with a letter or digit")
    return name


def _record(row: Schedule) -> ScheduleRecord:
    last = None
    if row.last_run_at is not None:
        last = LastRun(row.last_run_at, row.last_run_state or "running", row.last_made, row.last_skipped,
                       row.last_failed, row.last_flow_run_id)
    return ScheduleRecord(row.name, Selection.from_json(row.selection), tuple(row.sizes), row.timezone, row.cron,
                          row.run_at, row.active, row.created_by, row.created_at, row.sync_pending,
                          row.run_requested_at, row.next_run_at, last)


def _row(session: Session, name: str) -> Schedule:
    row = session.get(Schedule, name)
    if row is None:
        raise UnknownSchedule(f"schedule {name!r} does not exist")
    return row


def add(session: Session, record: ScheduleRecord, now: datetime) -> None:
    """Record a new schedule (active, in step with Prefect once `flows` has told it)."""
    check_name(record.name)
    if (record.cron is None) == (record.run_at is None):
        raise ScheduleError("when: give exactly one of --cron and --at")
    if not record.sizes:
        raise ScheduleError("sizes: give at least one --size")
    if session.get(Schedule, record.name) is not None:
        raise DuplicateSchedule(f"name: a schedule named {record.name!r} exists already "
                                "(`linstudio schedules rm` it first, or choose another name)")
    session.add(Schedule(name=record.name, selection=record.selection.to_json(), sizes=list(record.sizes),
                         cron=record.cron, run_at=record.run_at, timezone=record.timezone, active=record.active,
                         sync_pending=False, run_requested_at=None, created_by=record.created_by, created_at=now,
                         next_run_at=record.next_run_at))
    session.flush()


def get(session: Session, name: str) -> ScheduleRecord | None:
    row = session.get(Schedule, name)
    return None if row is None else _record(row)


def list_all(session: Session) -> list[ScheduleRecord]:
    return [_record(row) for row in session.scalars(select(Schedule).order_by(Schedule.name))]


def set_active(session: Session, name: str, active: bool, *, synced: bool) -> ScheduleRecord:
    """Pause or resume. `synced`: the caller has told Prefect already (the CLI); else `flows` will
    (a gallery user's click), and `sync_pending` says so until it has."""
    row = _row(session, name)
    row.active = active
    row.sync_pending = not synced
    session.flush()
    return _record(row)


def request_run(session: Session, name: str, now: datetime) -> ScheduleRecord:
    """Ask for one run now (the gallery's and the API's "run now"); `flows` starts it."""
    row = _row(session, name)
    row.run_requested_at = now
    session.flush()
    return _record(row)


def pending(session: Session) -> list[ScheduleRecord]:
    """Schedules whose wanted state Prefect has not been told, or that were asked to run now."""
    rows = session.scalars(select(Schedule).where((Schedule.sync_pending.is_(True))
                                                  | (Schedule.run_requested_at.is_not(None))))
    return [_record(row) for row in rows]


def mark_synced(session: Session, name: str, *, active: bool, run_requested_at: datetime | None,
                next_run_at: datetime | None) -> None:
    """Prefect now has `active` (and the run asked for at `run_requested_at` was started): clear the
    flags, unless someone changed the wanted state again meanwhile."""
    row = session.get(Schedule, name)
    if row is None:
        return
    if row.active == active:
        row.sync_pending = False
    if run_requested_at is not None and row.run_requested_at == run_requested_at:
        row.run_requested_at = None
    row.next_run_at = next_run_at
    session.flush()


def set_next_run(session: Session, name: str, next_run_at: datetime | None) -> None:
    row = session.get(Schedule, name)
    if row is not None:
        row.next_run_at = next_run_at
        session.flush()


def record_run(session: Session, name: str, run: LastRun) -> None:
    """What a run of `name` did (called as it starts, `running`, and as it ends)."""
    if run.state not in RUN_STATES:
        raise ValueError(f"run state {run.state!r}: one of {', '.join(RUN_STATES)}")
    row = session.get(Schedule, name)
    if row is None:  # removed while it ran: its renders stay, there is nothing to report to
        return
    row.last_run_at, row.last_run_state, row.last_flow_run_id = run.at, run.state, run.flow_run_id
    row.last_made, row.last_skipped, row.last_failed = run.made, run.skipped, run.failed
    session.flush()


def remove(session: Session, name: str) -> None:
    """Forget the schedule; the re-renders it made stay in the catalogue (they name it in their record)."""
    session.delete(_row(session, name))
    session.flush()


def _sources(selection: Selection):
    """The selection as a query of (render id, record), newest first."""
    query = select(Render.id, Render.record).order_by(Render.id.desc())
    if selection.render_ids:
        query = query.where(Render.id.in_(selection.render_ids))
    if selection.team is not None:
        query = query.where(Render.team == selection.team)
    if selection.project is not None:
        query = query.where(Render.project == selection.project)
    if selection.status is not None:
        query = query.where(Render.review_status == selection.status)
    if selection.tag is not None:
        query = query.where(Render.id.in_(select(RenderTag.render_id).where(RenderTag.tag == selection.tag)))
    return query


def source_render_ids(session: Session, name: str | None, selection: Selection, limit: int = 10_000) -> list[str]:
    """The renders a run of schedule `name` re-renders now, newest first: the selection, less the
    renders this schedule made itself (None: a re-render no schedule asked for, all of it)."""
    rows = session.execute(_sources(selection))
    return [render_id for render_id, record in rows
            if name is None or (record or {}).get("schedule") != name][:limit]


def selecting(session: Session, render_id: str) -> list[str]:
    """Names of the schedules that would re-render `render_id` if they ran now."""
    return [record.name for record in list_all(session)
            if any((stored or {}).get("schedule") != record.name
                   for _, stored in session.execute(_sources(record.selection).where(Render.id == render_id)))]
