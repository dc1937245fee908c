"""State changes the gallery makes that need the whole catalogue (database and store), not just a session.

Shared by the form routes and the JSON API so a button and a script do exactly the same thing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from catalogue import export as exporting
from catalogue import rerender_requests, rerenders
from catalogue.api import Catalogue
from catalogue.errors import CatalogueError
from catalogue.models import APPROVED, Render
from catalogue.queries import render_dict
from catalogue.schedules import ScheduleRecord, UnknownSchedule
from catalogue.web import exports, service
from linstudio_jobs import MAX_SIDE, size_problem  # noqa: F401 (MAX_SIDE: the pages and the API read it here)

log = logging.getLogger(__name__)

# The size rule is every job's (`linstudio_jobs.size_problem`); the gallery adds a floor of its own:
# a re-render below 64 px a side is never what an artist meant.
MIN_SIDE = 64
MAX_SIZES = 8
EXPORT_MAX = 5000
_SIZE = re.compile(r"^\s*(\d{2,5})\s*[xX×]\s*(\d{2,5})\s*$")


class ActionError(CatalogueError, ValueError):
    """A request the gallery refuses with a message for the artist (bad sizes, unknown render...)."""


class NotFound(CatalogueError, LookupError):
    """The render, job or submission named does not exist."""


class Conflict(CatalogueError):
    """The thing exists but is not in a state that allows this (answered 409)."""


class Unavailable(CatalogueError):
    """A feature this installation cannot provide right now (e.g. the export queue is full)."""


def parse_sizes(values: Iterable[str | Iterable[int]]) -> list[tuple[int, int]]:
    """`["2048x2048", [1024, 768]]` -> [(2048, 2048), (1024, 768)]: the jobs' size rule, from MIN_SIDE up."""
    sizes: list[tuple[int, int]] = []
    for value in values:
        if isinstance(value, str):
            if not value.strip():
                continue
            match = _SIZE.match(value)
            if not match:
                raise ActionError(f"size {value!r}: expected WIDTHxHEIGHT, e.g. 2048x2048")
            width, height = int(match.group(1)), int(match.group(2))
        else:
            width, height = (int(v) for v in value)
        problem = size_problem(width, height)
        if problem is not None:
            raise ActionError(f"size {width}x{height}: {problem}")
        if min(width, height) < MIN_SIDE:
            raise ActionError(f"size {width}x{height}: the gallery re-renders at {MIN_SIDE} px a side or more")
        if (width, height) not in sizes:
            sizes.append((width, height))
    if not sizes:
        raise ActionError("no size chosen: pick at least one size to render")
    if len(sizes) > MAX_SIZES:
        raise ActionError(f"{len(sizes)} sizes: at most {MAX_SIZES} per request")
    return sizes


def rerender(catalogue: Catalogue, render_id: str, sizes: list[tuple[int, int]], who: str) -> list[str]:
    """Plan re-renders of `render_id` at `sizes` and ask for them to be started (a rerender request that
    `flows` picks up); returns the new job keys at once, so the page can follow their states."""
    if catalogue.render(render_id) is None:
        raise NotFound(f"render {render_id}: not in the catalogue")
    try:
        records = rerenders.plan_rerenders(catalogue, [render_id], sizes, who)
    except rerenders.RerenderError as exc:
        raise ActionError(str(exc)) from None
    keys = [r["key"] for r in records]
    rendered = catalogue.rendered_keys(keys)
    todo = [k for k in keys if k not in rendered]
    if todo:
        with catalogue.transaction() as session:
            rerender_requests.request_start(session, "rerender", todo, who, catalogue.clock())
    return keys


def retry(catalogue: Catalogue, job_key: str, who: str) -> dict[str, Any]:
    """Plan a failed job again and ask for it to be started in the background (a rerender request that
    `flows` picks up: the `rerender` deployment where one is configured, else a local process); returns the job."""
    with catalogue.transaction() as session:
        if not service.retry_job(session, job_key, catalogue.clock()):
            if service.job_of(session, job_key) is None:
                raise NotFound(f"job {job_key}: not in the catalogue")
            raise Conflict(f"job {job_key}: only a failed job can be retried")
        rerender_requests.request_start(session, "retry", [job_key], who, catalogue.clock())
    with catalogue.transaction() as session:
        return service.job_of(session, job_key)


def cancel(catalogue: Catalogue, job_key: str, who: str) -> dict[str, Any]:
    """Take a queued job off the queue (see service.cancel_job); returns the job."""
    with catalogue.transaction() as session:
        if not service.cancel_job(session, job_key, who, catalogue.clock()):
            if service.job_of(session, job_key) is None:
                raise NotFound(f"job {job_key}: not in the catalogue")
            raise Conflict(f"job {job_key}: only a queued (planned) job can be cancelled")
        return service.job_of(session, job_key)


def delete_render(catalogue: Catalogue, render_id: str, who: str) -> None:
    """Delete a render's objects and row together (catalogue.forget_renders), and take its job off the queue.

    forget_renders plans the job again (it exists for forced re-runs); a deleted render should not
    come back on the next run of its manifest by itself, so the job is then cancelled with a reason
    saying who deleted it. Re-running the manifest with --force, or "retry", renders it again.
    """
    render = catalogue.render(render_id)
    if render is None:
        raise NotFound(f"render {render_id}: not in the catalogue")
    catalogue.forget_renders([render["job_key"]])
    with catalogue.transaction() as session:
        service.cancel_job(session, render["job_key"], who, catalogue.clock(), reason="render deleted")


def _schedule(catalogue: Catalogue, name: str) -> ScheduleRecord:
    """The schedule `name`, or the gallery's NotFound (404): catalogue.schedules' UnknownSchedule is a
    ValueError, which the app would answer 400, or 500 where it escapes a form route."""
    record = catalogue.schedule(name)
    if record is None:
        raise NotFound(f"schedule {name}: not in the catalogue")
    return record


def set_schedule_active(catalogue: Catalogue, name: str, active: bool, who: str) -> ScheduleRecord:
    """Pause (False) or resume a schedule as a gallery user or API token: the catalogue records the wanted
    state with `sync_pending`, and the dispatcher in `flows` that `linstudio serve` runs beside the
    gallery tells Prefect and clears it. The gallery never talks to Prefect itself.

    Asking for the state the schedule is in already changes nothing (no needless round to Prefect).
    """
    record = _schedule(catalogue, name)
    if record.active == active:
        return record
    try:
        changed = catalogue.set_schedule_active(name, active, synced=False)
    except UnknownSchedule:  # removed by `linstudio schedules rm` since the look above
        raise NotFound(f"schedule {name}: not in the catalogue") from None
    log.info("schedule %s %s by %s (Prefect is told by the dispatcher)", name, "resumed" if active else "paused",
             who)
    return changed


def request_schedule_run(catalogue: Catalogue, name: str, who: str) -> ScheduleRecord:
    """Ask for one run of a schedule now (the dispatcher in `flows` starts it and clears the request).

    While a request is waiting, asking again changes nothing: a double click must not start two runs.
    """
    record = _schedule(catalogue, name)
    if record.run_requested_at is not None:
        return record
    try:
        requested = catalogue.request_schedule_run(name)
    except UnknownSchedule:
        raise NotFound(f"schedule {name}: not in the catalogue") from None
    log.info("schedule %s: a run now requested by %s", name, who)
    return requested


def select_renders(session, render_ids: list[str] | None = None, project: str | None = None,
                   team: str | None = None) -> list[dict[str, Any]]:
    """The renders `render_ids`, or every approved render of `project` (optionally of `team`), as export
    wants them; refuses an unknown id, an empty project and more than EXPORT_MAX renders."""
    if render_ids:
        if len(set(render_ids)) > EXPORT_MAX:
            raise ActionError(f"export of {len(set(render_ids))} renders: at most {EXPORT_MAX} at a time")
        rows = list(session.scalars(select(Render).where(Render.id.in_(render_ids)).order_by(Render.id)))
        missing = sorted(set(render_ids) - {r.id for r in rows})
        if missing:
            raise NotFound(f"export: no render {', '.join(missing[:5])} in the catalogue")
    elif project:
        query = select(Render).where(Render.project == project, Render.review_status == APPROVED)
        if team:
            query = query.where(Render.team == team)
        rows = list(session.scalars(query.order_by(Render.id).limit(EXPORT_MAX + 1)))
        if len(rows) > EXPORT_MAX:
            raise ActionError(f"export of project {project!r}: more than {EXPORT_MAX} approved renders; "
                              "export them in parts with `linstudio export --render`")
        if not rows:
            raise NotFound(f"export of project {project!r}: nothing approved yet")
    else:
        raise ActionError("export: choose renders, or a project to export everything approved in it")
    return [render_dict(r, full=True) | {"review_status": r.review_status} for r in rows]


def export_selection(catalogue: Catalogue, options: exporting.ExportOptions, render_ids: list[str] | None = None,
                     project: str | None = None, team: str | None = None) -> list[str]:
    """Export the renders `render_ids`, or every approved render of `project`, here and now (`linstudio
    export`, which runs as the person typing it); returns the URIs written."""
    with catalogue.transaction() as session:
        renders = select_renders(session, render_ids, project, team)
    return exporting.export_renders(catalogue.store, renders, options)


def queue_export(catalogue: Catalogue, runner, options: exporting.ExportOptions, who: str,
                 render_ids: list[str] | None = None, project: str | None = None,
                 team: str | None = None) -> tuple[dict[str, Any], bool]:
    """Check the selection (renders, names, sizes) and queue it for the export workers, or join the
    export of the same selection already queued or running; returns (export, joined).

    Everything that can be refused is refused here, in the request; the files are written by
    `runner` (catalogue.web.export_runner) in the background.
    """
    with catalogue.transaction() as session:
        renders = select_renders(session, render_ids, project, team)
        try:
            exporting.plan_names(renders, options)
        except exporting.ExportError as exc:  # two renders one name, a render too big for the format
            raise Conflict(str(exc)) from None
        try:
            export, joined = exports.queue(session, options, [r["render_id"] for r in renders], who,
                                           catalogue.clock())
        except exports.QueueFull as exc:
            raise Unavailable(str(exc)) from None
    if not joined:
        runner.wake()
    return export, joined


def check_web_destination(destination: str, allowed_roots: list[Path]) -> str:
    """Exports asked for over the web may write only to S3 or under an allow-listed folder.

    The gallery process may be able to write anywhere on its machine; an artist's form must not be
    a way to do so. (`linstudio export` runs as the person typing it and may write anywhere they can.)
    """
    if destination.startswith("s3://"):
        return destination
    folder = destination.removeprefix("file://")
    # No `~` over the web: expanding `~name` raises for an unknown account, so the answer (400 or
    # 500) would tell a caller which system accounts exist. Every `~` form is refused alike.
    if folder.startswith("~"):
        raise ActionError(f"export destination {destination!r}: give an absolute folder (not ~) or an s3:// prefix")
    path = Path(folder)
    if not path.is_absolute():
        raise ActionError(f"export destination {destination!r}: give an absolute folder or an s3:// prefix")
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in allowed_roots):
        shown = ", ".join(str(root) for root in allowed_roots)
        raise ActionError(f"export destination {destination!r}: the gallery may only write under {shown} "
                          "(LINSTUDIO_SHARED_ROOTS) or to s3://")
    return str(resolved)
