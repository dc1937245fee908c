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
from pydantic import BaseModel, BeforeValidator, Field

from catalogue import export as exporting
from catalogue import review, search
from catalogue.models import REVIEW_STATUSES
from catalogue.web import actions, exports, service, views
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


class RenderPage(BaseModel):
    items: list[dict[str, Any]]
    next: str | None = Field(description="Cursor of the next page; null on the last page.")


class ReviewIn(BaseModel):
    status: Literal[REVIEW_STATUSES]  # type: ignore[valid-type]
    note: str = Field(default="", max_length=review.NOTE_LIMIT)


class RerenderIn(BaseModel):
    sizes: list[str | tuple[int, int]] = Field(description='Sizes to render, "WIDTHxHEIGHT" or [width, height].',
                                               min_length=1, max_length=actions.MAX_SIZES)


class ExportIn(BaseModel):
    destination: str = Field(description="s3://bucket/prefix, or a folder under LINSTUDIO_SHARED_ROOTS or "
                                         "$LINSTUDIO_HOME/exports.")
    render_ids: list[str] | None = Field(default=None, description="These renders; or leave out and give project.")
    project: str | None = Field(default=None, description="Every approved render of this project.")
    team: str | None = None
    format: Literal[tuple(exporting.FORMATS)] = "png8"  # type: ignore[valid-type]
    template: str = exporting.DEFAULT_TEMPLATE
    keep_metadata: bool = True


def filters_from(q: str | None, team: str | None, project: str | None, tag: str | None, model: str | None,
                 size: str | None, status: str | None, date_from: date | None, date_to: date | None) -> search.Filters:
    return search.Filters(q=q, team=team, project=project, tag=tag, model=model, size=size, status=status,
                          date_from=date_from, date_to=date_to)


@router.get("/renders", response_model=RenderPage, summary="Search and filter renders, newest first")
def list_renders(request: Request, who: Reader, q: str | None = None, team: str | None = None,
                 project: str | None = None, tag: str | None = None, model: str | None = None,
                 size: Annotated[str | None, Query(description="WIDTHxHEIGHT")] = None,
                 status: Annotated[str | None, Query(description="approved, rejected, changes_requested or "
                                                                 "unreviewed")] = None,
                 date_from: Annotated[IsoDate | None, Query(description="YYYY-MM-DD, inclusive")] = None,
                 date_to: Annotated[IsoDate | None, Query(description="YYYY-MM-DD, inclusive")] = None,
                 cursor: str | None = None,
                 limit: Annotated[int, Query(ge=1, le=search.PAGE_MAX)] = search.PAGE_DEFAULT) -> dict:
    filters = filters_from(q, team, project, tag, model, size, status, date_from, date_to)
    with request.app.state.catalogue.transaction() as session:
        page = search.search(session, filters, limit, cursor)
    return {"items": for_viewer(page.items, who), "next": page.next}


@router.get("/renders/{render_id}", summary="One render: record, siblings, lineage, reviews, re-render jobs")
def get_render(request: Request, render_id: str, who: Reader) -> dict:
    return for_viewer(views.render_detail(request.app.state.catalogue, render_id), who)


@router.get("/renders/{render_id}/reviews", summary="Review history, newest first")
def get_reviews(request: Request, render_id: str, _who: Reader) -> list[dict]:
    with request.app.state.catalogue.transaction() as session:
        if not service.render_exists(session, render_id):
            raise actions.NotFound(f"render {render_id}: not in the catalogue")
        return review.history(session, render_id)


@router.post("/renders/{render_id}/review", status_code=201, summary="Approve, reject or ask for changes")
def post_review(request: Request, render_id: str, body: ReviewIn, who: Writer) -> dict:
    catalogue = request.app.state.catalogue
    with catalogue.transaction() as session:
        return review.record_review(session, render_id, body.status, body.note, who.name, catalogue.clock())


@router.post("/renders/{render_id}/rerender", status_code=202, summary="Queue re-renders at other sizes")
def post_rerender(request: Request, render_id: str, body: RerenderIn, who: Writer) -> dict:
    sizes = actions.parse_sizes(body.sizes)
    keys = actions.rerender(request.app.state.catalogue, render_id, sizes, who.name)
    return {"render_id": render_id, "job_keys": keys}


@router.delete("/renders/{render_id}", summary="Delete a render: its objects and its row")
def delete_render(request: Request, render_id: str, who: Writer) -> dict:
    actions.delete_render(request.app.state.catalogue, render_id, who.name)
    return {"deleted": render_id}


@router.post("/jobs/{job_key}/retry", summary="Plan a failed job again and render it in the background")
def retry_job(request: Request, job_key: str, who: Writer) -> dict:
    return actions.retry(request.app.state.catalogue, job_key, who.name)


@router.post("/jobs/{job_key}/cancel", summary="Take a queued job off the queue")
def cancel_job(request: Request, job_key: str, who: Writer) -> dict:
    return actions.cancel(request.app.state.catalogue, job_key, who.name)


@router.get("/submissions", summary="Submitted manifests, newest first, with derived status")
def list_submissions(request: Request, who: Reader, team: str | None = None, before: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict:
    with request.app.state.catalogue.transaction() as session:
        items = service.submissions(session, team, limit, before)
    return {"items": for_viewer(items, who), "next": items[-1]["submission_id"] if len(items) == limit else None}


@router.get("/submissions/{submission_id}", summary="One submission: status, errors, renders")
def get_submission(request: Request, submission_id: str, who: Reader) -> dict:
    return for_viewer(views.submission_detail(request.app.state.catalogue, submission_id), who)


@router.post("/export", status_code=202, summary="Queue an export of renders to a folder or S3 prefix",
             description="Checks the selection and answers at once; the files are written in the background. "
                         "Follow `url` for progress (`state`: queued, running, done with `written`, failed with "
                         "`error`). The same selection asked for again while it runs joins it (`joined`: true).")
def post_export(request: Request, body: ExportIn, who: Writer) -> dict:
    destination = actions.check_web_destination(body.destination, request.app.state.export_roots)
    options = exporting.ExportOptions(destination=destination, format=body.format, template=body.template,
                                      keep_metadata=body.keep_metadata)
    export, joined = actions.queue_export(request.app.state.catalogue, request.app.state.exports, options, who.name,
                                          body.render_ids, body.project, body.team)
    return export | {"joined": joined}


@router.get("/exports", summary="Recent exports, newest first, with their progress")
def list_exports(request: Request, who: Reader, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict:
    with request.app.state.catalogue.transaction() as session:
        return {"items": for_viewer(exports.recent(session, limit), who)}


@router.get("/exports/{export_id}", summary="One export: state, files done of total, the files once done")
def get_export(request: Request, export_id: str, who: Reader) -> dict:
    return for_viewer(views.export_detail(request.app.state.catalogue, export_id), who)
