"""The JSON API under /api/: everything the pages do, for pipeline TDs' scripts.

Records use the field names of `linstudio catalogue ls --json` (catalogue.queries.render_dict),
plus `review_status`. Lists are keyset-paged: `{"items": [...], "next": CURSOR}`; pass `next` back
as `cursor` for the following page (null on the last one).
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from catalogue import export as exporting
from catalogue import review, search
from catalogue.models import REVIEW_STATUSES
from catalogue.web import actions, errors, exports, params, schemas, service, views
from catalogue.web.contract import DESTINATION_MARK
from catalogue.web.errors import ANY_REQUEST, ANY_WRITE
from catalogue.web.redact import for_viewer
from catalogue.web.security import Viewer, reader, writer

router = APIRouter(prefix="/api", tags=["catalogue"])
Reader = Annotated[Viewer | None, Depends(reader)]
Writer = Annotated[Viewer, Depends(writer)]


ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_date_only(value: Any) -> Any:
    """Dates are YYYY-MM-DD text only: pydantic would read `date_to=0` as a Unix timestamp (1970-01-01)."""
    if isinstance(value, str) and ISO_DATE.fullmatch(value):
        return value
    raise ValueError("expected a date like 2026-11-27 (YYYY-MM-DD)")


IsoDate = Annotated[date, BeforeValidator(_iso_date_only)]


class StrictBody(BaseModel):
    """A request body read as its schema says: no unknown fields, and no "true" for true or "64" for 64
    (pydantic's lax mode would take those, which the published schema does not)."""

    model_config = ConfigDict(strict=True, extra="forbid")


class ReviewIn(StrictBody):
    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra={
        "examples": [{"status": "approved", "note": "Ship it."}]})

    status: Literal[REVIEW_STATUSES]  # type: ignore[valid-type]
    note: str = Field(default="", max_length=review.NOTE_LIMIT, pattern=params.NO_NUL)


RerenderSize = params.RerenderSizeText | Annotated[list[params.SideLength], Field(min_length=2, max_length=2)]


class RerenderIn(StrictBody):
    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra={
        "examples": [{"sizes": ["2048x2048", [1024, 768]]}]})

    sizes: list[RerenderSize] = Field(
        description='Sizes to render, "WIDTHxHEIGHT" or [width, height]: each side a multiple of 8 from 64 to '
                    f'{actions.MAX_SIDE}.', min_length=1, max_length=actions.MAX_SIZES)


class ExportOptionsIn(StrictBody):
    """Where and how an export writes; ExportOfRenders and ExportOfProject say what it writes."""

    destination: str = Field(max_length=params.DESTINATION_MAX, json_schema_extra={DESTINATION_MARK: True},
                             description="s3://bucket/prefix, or a folder under LINSTUDIO_SHARED_ROOTS or "
                                         "$LINSTUDIO_HOME/exports (signed in, the pattern names this server's "
                                         "folders).")
    format: Literal[tuple(exporting.FORMATS)] = "png8"  # type: ignore[valid-type]
    template: str = Field(default=exporting.DEFAULT_TEMPLATE, max_length=params.TEMPLATE_MAX,
                          pattern=params.TEMPLATE_PATTERN,
                          description="File names: text and fields among " + ", ".join(
                              "{" + f + "}" for f in exporting.TEMPLATE_FIELDS) + "; at least one field.")
    keep_metadata: bool = True


class ExportOfRenders(ExportOptionsIn):
    """An export of these renders."""

    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra={
        "examples": [{"destination": "s3://deliveries/night-city", "render_ids": ["01JBZ3K7Q8R2V4X6Y8Z0A2B4C6"]}]})

    render_ids: params.RenderIds


class ExportOfProject(ExportOptionsIn):
    """An export of every approved render of a project (of one team's, with `team`)."""

    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra={
        "examples": [{"destination": "s3://deliveries/night-city", "project": "night-city", "format": "png8"}]})

    project: str = Field(min_length=1, max_length=params.NAME_MAX, pattern=params.NO_NUL)
    team: str = Field(default=None, max_length=params.NAME_MAX, pattern=params.NO_NUL,
                      description="Only this team's renders.")


ExportIn = ExportOfRenders | ExportOfProject


def filters_from(q: str | None, team: str | None, project: str | None, tag: str | None, model: str | None,
                 size: str | None, status: str | None, date_from: date | None, date_to: date | None) -> search.Filters:
    return search.Filters(q=q, team=team, project=project, tag=tag, model=model, size=size, status=status,
                          date_from=date_from, date_to=date_to)


def answers(status: int, model: type[BaseModel], *errors_: int) -> dict[str, Any]:
    """An operation's declared answers: `model` on success, the shared error body for the rest."""
    return {"status_code": status, "response_model": None,
            "responses": {**errors.responses(*errors_), status: {"model": model}}}


@router.get("/renders", summary="Search and filter renders, newest first",
            **answers(200, schemas.RenderPage, *ANY_REQUEST, 400))
def list_renders(request: Request, who: Reader, q: params.SearchText = None, team: params.Name = None,
                 project: params.Name = None, tag: params.Tag = None, model: params.Name = None,
                 size: params.Size = None, status: params.Status = None,
                 date_from: Annotated[IsoDate | None, Query(description="YYYY-MM-DD, inclusive")] = None,
                 date_to: Annotated[IsoDate | None, Query(description="YYYY-MM-DD, inclusive")] = None,
                 cursor: params.Cursor = None,
                 limit: Annotated[int, Query(ge=1, le=search.PAGE_MAX)] = search.PAGE_DEFAULT) -> dict:
    """A cursor only continues the search that gave it: another search's cursor answers 400."""
    filters = filters_from(q, team, project, tag, model, size, status and status.value, date_from, date_to)
    with request.app.state.catalogue.transaction() as session:
        page = search.search(session, filters, limit, cursor)
    return {"items": for_viewer(page.items, who), "next": page.next}


@router.get("/renders/{render_id}", summary="One render: record, siblings, lineage, reviews, re-render jobs",
            **answers(200, schemas.RenderDetail, *ANY_REQUEST, 404))
def get_render(request: Request, render_id: params.RenderId, who: Reader) -> dict:
    return for_viewer(views.render_detail(request.app.state.catalogue, render_id), who)


@router.get("/renders/{render_id}/reviews", summary="Review history, newest first",
            status_code=200, response_model=None,
            responses={**errors.responses(*ANY_REQUEST, 404), 200: {"model": list[schemas.Review]}})
def get_reviews(request: Request, render_id: params.RenderId, _who: Reader) -> list[dict]:
    with request.app.state.catalogue.transaction() as session:
        if not service.render_exists(session, render_id):
            raise actions.NotFound(f"render {render_id}: not in the catalogue")
        return review.history(session, render_id)


@router.post("/renders/{render_id}/review", summary="Approve, reject or ask for changes",
             **answers(201, schemas.Review, *ANY_WRITE, 404))
def post_review(request: Request, render_id: params.RenderId, body: ReviewIn, who: Writer) -> dict:
    catalogue = request.app.state.catalogue
    with catalogue.transaction() as session:
        return review.record_review(session, render_id, body.status, body.note, who.name, catalogue.clock())


@router.post("/renders/{render_id}/rerender", summary="Queue re-renders at other sizes",
             **answers(202, schemas.RerenderQueued, *ANY_WRITE, 404))
def post_rerender(request: Request, render_id: params.RenderId, body: RerenderIn, who: Writer) -> dict:
    sizes = actions.parse_sizes(body.sizes)
    keys = actions.rerender(request.app.state.catalogue, render_id, sizes, who.name)
    return {"render_id": render_id, "job_keys": keys}


@router.delete("/renders/{render_id}", summary="Delete a render: its objects and its row",
               **answers(200, schemas.Deleted, *ANY_WRITE, 404))
def delete_render(request: Request, render_id: params.RenderId, who: Writer) -> dict:
    actions.delete_render(request.app.state.catalogue, render_id, who.name)
    return {"deleted": render_id}


@router.post("/jobs/{job_key}/retry", summary="Plan a failed job again and render it in the background",
             **answers(200, schemas.Job, *ANY_WRITE, 404, 409))
def retry_job(request: Request, job_key: params.JobKey, who: Writer) -> dict:
    return actions.retry(request.app.state.catalogue, job_key, who.name)


@router.post("/jobs/{job_key}/cancel", summary="Take a queued job off the queue",
             **answers(200, schemas.Job, *ANY_WRITE, 404, 409))
def cancel_job(request: Request, job_key: params.JobKey, who: Writer) -> dict:
    return actions.cancel(request.app.state.catalogue, job_key, who.name)


@router.get("/submissions", summary="Submitted manifests, newest first, with derived status",
            **answers(200, schemas.SubmissionPage, *ANY_REQUEST))
def list_submissions(request: Request, who: Reader, team: params.Name = None, before: params.Before = None,
                     limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict:
    with request.app.state.catalogue.transaction() as session:
        items = service.submissions(session, team, limit, before)
    return {"items": for_viewer(items, who), "next": items[-1]["submission_id"] if len(items) == limit else None}


@router.get("/submissions/{submission_id}", summary="One submission: status, errors, renders",
            **answers(200, schemas.Submission, *ANY_REQUEST, 404))
def get_submission(request: Request, submission_id: params.SubmissionId, who: Reader) -> dict:
    return for_viewer(views.submission_detail(request.app.state.catalogue, submission_id), who)


@router.post("/export", summary="Queue an export of renders to a folder or S3 prefix",
             description="Checks the selection and answers at once; the files are written in the background. "
                         "Follow `url` for progress (`state`: queued, running, done with `written`, failed with "
                         "`error`). The same selection asked for again while it runs joins it (`joined`: true). "
                         "A folder that leads out of the allowed ones through a symbolic link answers 400; "
                         "a template that gives two renders one name answers 409.",
             **answers(202, schemas.ExportQueued, *ANY_WRITE, 404, 409, 503))
def post_export(request: Request, body: ExportIn, who: Writer) -> dict:
    if not re.fullmatch(request.app.state.destination_pattern, body.destination):
        shown = ", ".join(str(root) for root in request.app.state.export_roots)
        raise RequestValidationError([{"loc": ("body", "destination"), "type": "value_error",
                                       "msg": f"give an s3://bucket/prefix or a folder under {shown}"}])
    destination = actions.check_web_destination(body.destination, request.app.state.export_roots)
    options = exporting.ExportOptions(destination=destination, format=body.format, template=body.template,
                                      keep_metadata=body.keep_metadata)
    if isinstance(body, ExportOfRenders):
        chosen = {"render_ids": body.render_ids}
    else:
        chosen = {"project": body.project, "team": body.team}
    export, joined = actions.queue_export(request.app.state.catalogue, request.app.state.exports, options, who.name,
                                          **chosen)
    return export | {"joined": joined}


@router.get("/exports", summary="Recent exports, newest first, with their progress",
            **answers(200, schemas.ExportPage, *ANY_REQUEST))
def list_exports(request: Request, who: Reader, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict:
    with request.app.state.catalogue.transaction() as session:
        return {"items": for_viewer(exports.recent(session, limit), who)}


@router.get("/exports/{export_id}", summary="One export: state, files done of total, the files once done",
            **answers(200, schemas.Export, *ANY_REQUEST, 404))
def get_export(request: Request, export_id: params.ExportId, who: Reader) -> dict:
    return for_viewer(views.export_detail(request.app.state.catalogue, export_id), who)


# -- scheduled re-renders ------------------------------------------------------------------------------
# Schedules are added and removed on the command line (`linstudio schedules add`), which registers them
# with Prefect too. The API pauses, resumes and runs them through the catalogue, as the pages do: the
# dispatcher `linstudio serve` runs beside the gallery tells Prefect, so these answer 202.
SCHEDULE_CHANGE = ("Answers 202 Accepted with the schedule as recorded: the catalogue takes the change at once "
                   "and the dispatcher beside the gallery passes it on to Prefect within seconds. ")


@router.get("/schedules", summary="Scheduled re-renders: what each selects, when it runs, how its last run went",
            description="Every schedule, by name. Schedules are added with `linstudio schedules add`.",
            **answers(200, schemas.SchedulePage, *ANY_REQUEST))
def list_schedules(request: Request, who: Reader) -> dict:
    return {"items": for_viewer(views.schedule_list(request.app.state.catalogue), who)}


@router.post("/schedules/{name}/pause", summary="Pause a schedule: no more runs until it is resumed",
             description=SCHEDULE_CHANGE + "`active` is false at once and `sync_pending` true until Prefect has "
                                           "been told. Pausing a paused schedule changes nothing.",
             **answers(202, schemas.Schedule, *ANY_WRITE, 404))
def pause_schedule(request: Request, name: params.ScheduleName, who: Writer) -> dict:
    return views.schedule_json(actions.set_schedule_active(request.app.state.catalogue, name, False, who.name))


@router.post("/schedules/{name}/resume", summary="Resume a paused schedule",
             description=SCHEDULE_CHANGE + "`active` is true at once and `sync_pending` true until Prefect has "
                                           "been told. Resuming an active schedule changes nothing.",
             **answers(202, schemas.Schedule, *ANY_WRITE, 404))
def resume_schedule(request: Request, name: params.ScheduleName, who: Writer) -> dict:
    return views.schedule_json(actions.set_schedule_active(request.app.state.catalogue, name, True, who.name))


@router.post("/schedules/{name}/run", summary="Run a schedule once now, at its sizes, on its selection as it is now",
             description=SCHEDULE_CHANGE + "`run_requested_at` is set until the run has been started; its outcome "
                                           "is then `last_run`. Asking again while a run is requested asks for no "
                                           "second run.",
             **answers(202, schemas.Schedule, *ANY_WRITE, 404))
def run_schedule(request: Request, name: params.ScheduleName, who: Writer) -> dict:
    return views.schedule_json(actions.request_schedule_run(request.app.state.catalogue, name, who.name))
