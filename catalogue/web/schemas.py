"""The shapes of the API's successful answers, as the OpenAPI publishes them.

Routes build their answers as dicts (catalogue.queries, catalogue.web.service and exports shape
them for the pages too) and declare these models only in the spec: FastAPI does not filter or
re-validate the dicts through them. The contract test (tests/web/test_api_contract.py) holds
every answer against these schemas instead, so a field renamed in a dict fails there.

Fields that anonymous readers do not get (catalogue.web.redact) are optional; everything a record
always has is required. Records may carry more fields than listed (`extra` is allowed).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from catalogue.models import REVIEW_STATUSES
from catalogue.schedules import RUN_STATES

ReviewStatus = Literal[REVIEW_STATUSES]  # type: ignore[valid-type]
RunState = Literal[RUN_STATES]  # type: ignore[valid-type]
ExportState = Literal["queued", "running", "done", "failed"]


class Record(BaseModel):
    model_config = ConfigDict(extra="allow")


class Render(Record):
    render_id: str
    job_key: str
    submission_id: str | None
    team: str
    project: str
    asset_id: str
    prompt: str
    seed: int
    width: int
    height: int
    model: str
    tags: list[str]
    review_status: ReviewStatus | None = None
    projection: str | None = Field(default=None, description='"equirectangular" for a VR panorama (shown in a '
                                                             '360° viewer), else null. In one render\'s detail.')
    object_uri: str | None = Field(default=None, description="Left out for anonymous readers unless s3://.")
    manifest_path: str | None = Field(default=None, description="Left out for anonymous readers.")


class RenderPage(BaseModel):
    items: list[Render]
    next: str | None = Field(description="`cursor` of the next page; null on the last page.")


class Review(Record):
    id: int
    render_id: str
    status: ReviewStatus
    note: str
    reviewer: str
    created_at: str


class Job(Record):
    key: str
    state: str
    error: str | None
    attempts: int
    submission_id: str | None
    updated_at: str


class RenderDetail(Record):
    render: Render
    siblings: list[dict[str, Any]]
    lineage: dict[str, Any]
    reviews: list[Review]
    rerender_jobs: list[Job]
    schedules: list[str] = Field(description="Names of the schedules that select this render (would re-render "
                                             "it if they ran now); see /api/schedules.")


class RerenderQueued(BaseModel):
    render_id: str
    job_keys: list[str] = Field(description="The re-render jobs, one per size; follow them in the render's "
                                            "`rerender_jobs`.")


class Deleted(BaseModel):
    deleted: str = Field(description="The id of the render deleted.")


class Submission(Record):
    submission_id: str
    team: str
    project: str
    manifest_name: str
    job_count: int
    created_at: str
    status: str
    jobs: dict[str, int]
    manifest_path: str | None = Field(default=None, description="Left out for anonymous readers.")


class SubmissionPage(BaseModel):
    items: list[Submission]
    next: str | None = Field(description="`before` of the next page; null on the last page.")


class Export(Record):
    export_id: str
    state: ExportState
    done: int
    total: int
    format: str
    template: str
    keep_metadata: bool
    requested_by: str
    error: str | None
    created_at: str
    url: str = Field(description="Where to poll this export.")
    destination: str | None = Field(default=None, description="Left out for anonymous readers unless s3://.")
    written: list[str] | None = Field(default=None, description="The files written, once done (left out for "
                                                                "anonymous readers unless s3://).")


class ExportQueued(Export):
    joined: bool = Field(description="True when the same selection was already queued or running.")


class ExportPage(BaseModel):
    items: list[Export]


class ScheduleSelection(BaseModel):
    """Which renders a schedule re-renders: `render_ids`, or every render matching all the filters given."""

    render_ids: list[str] | None = None
    team: str | None = None
    project: str | None = None
    tag: str | None = None
    status: ReviewStatus | None = None


class ScheduleLastRun(BaseModel):
    """How the schedule's last run went: renders made, skipped (there already) and failed; counts are
    null while it runs."""

    at: str
    state: RunState
    made: int | None
    skipped: int | None
    failed: int | None
    flow_run_id: str | None


class Schedule(Record):
    """A scheduled re-render as the catalogue holds it (`linstudio schedules ls --json`'s fields, plus
    `sync_pending` and `run_requested_at`). Exactly one of `cron` and `at` is set."""

    name: str
    selection: ScheduleSelection
    selection_text: str = Field(description="The selection in words, e.g. `project night-city, status approved`.")
    sizes: list[str] = Field(description="The sizes each run renders, WIDTHxHEIGHT.")
    cron: str | None = Field(description="When it runs, as cron in `timezone`; null for a one-time schedule.")
    at: str | None = Field(description="When a one-time schedule runs (ISO 8601); null for a cron schedule.")
    timezone: str
    active: bool = Field(description="The wanted state: false once paused.")
    created_by: str
    created_at: str | None
    next_run: str | None
    last_run: ScheduleLastRun | None
    sync_pending: bool = Field(description="A pause or resume from the gallery or the API that Prefect has not "
                                           "been told yet (the dispatcher beside the gallery does, within seconds).")
    run_requested_at: str | None = Field(description="When a run now was asked for that has not been started yet; "
                                                     "null otherwise.")


class SchedulePage(BaseModel):
    items: list[Schedule]
