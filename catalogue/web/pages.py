"""Server-rendered pages: gallery, asset page, submissions, exports, schedules, sign-in. Every action is a plain form post
(POST, then redirect back), so everything works without JavaScript."""

from __future__ import annotations

import logging
from datetime import date
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from catalogue import auth, review, search
from catalogue import export as exporting
from catalogue.models import EXPORT_QUEUED, EXPORT_RUNNING, REVIEW_STATUSES
from catalogue.web import actions, downloads, exports, service, throttle, views
from catalogue.web.redact import for_viewer
from catalogue.web.security import SESSION_COOKIE, Viewer, csrf_token, reader, require_csrf, viewer, writer

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
Reader = Annotated[Viewer | None, Depends(reader)]
Writer = Annotated[Viewer, Depends(writer)]


def page(request: Request, template: str, who: Viewer | None, status: int = 200, headers: dict | None = None,
         **context) -> HTMLResponse:
    html = request.app.state.templates.get_template(template).render(
        request=request, viewer=who, csrf_token=csrf_token(request), **context)
    return HTMLResponse(html, status_code=status, headers=headers)


def back_to(target: str | None, default: str) -> RedirectResponse:
    """303 to `target` when it is a path on this site (never another host), else to `default`."""
    safe = target if target and target.startswith("/") and not target.startswith("//") and "\\" not in target \
        else default
    return RedirectResponse(safe, status_code=303)


def _date(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise search.SearchError(f"{name} {value!r}: expected a date like 2026-11-27") from None


@router.get("/", response_class=HTMLResponse)
def gallery(request: Request, who: Reader, q: str | None = None, team: str | None = None, project: str | None = None,
            tag: str | None = None, model: str | None = None, size: str | None = None, status: str | None = None,
            date_from: str | None = None, date_to: str | None = None, cursor: str | None = None):
    typed_size = (size or "").strip().lower() or None  # an artist's " 1024X1024" is the API's 1024x1024
    filters = search.Filters(q=q, team=team, project=project, tag=tag, model=model, size=typed_size, status=status,
                             date_from=_date(date_from, "date_from"), date_to=_date(date_to, "date_to"))
    with request.app.state.catalogue.transaction() as session:
        result = search.search(session, filters, search.PAGE_DEFAULT, cursor)
        menus = search.facets(session)
    active = filters.active()
    next_link = f"/?{urlencode(active | {'cursor': result.next})}" if result.next else None
    return page(request, "gallery.html", who, renders=result.items, filters=active, menus=menus,
                statuses=(search.UNREVIEWED, *REVIEW_STATUSES), next_link=next_link,
                formats=list(exporting.FORMATS), default_template=exporting.DEFAULT_TEMPLATE,
                export_root=request.app.state.export_roots[0])


@router.get("/renders/{render_id}", response_class=HTMLResponse)
def render_page(request: Request, render_id: str, who: Reader):
    detail = views.render_detail(request.app.state.catalogue, render_id)
    render, jobs = detail["render"], detail["rerender_jobs"]
    pending = any(job["state"] in ("planned", "running") for job in jobs)
    suggested = [(render["width"] * k, render["height"] * k) for k in (2, 4)
                 if max(render["width"], render["height"]) * k <= actions.MAX_SIDE]
    return page(request, "render.html", who, statuses=REVIEW_STATUSES, refresh=pending, suggested=suggested,
                render=render, siblings=detail["siblings"], lineage=detail["lineage"], reviews=detail["reviews"],
                jobs=jobs, schedules=detail["schedules"], source=views.viewer_source(render, request.app.state.catalogue.store))


@router.get("/renders/{render_id}/download")
def download(request: Request, render_id: str, _who: Reader):
    render = views.render_row(request.app.state.catalogue, render_id)
    name = f"{render['asset_id']}_{render['seed']}_{render['width']}x{render['height']}_{render_id}.png"
    return downloads.object_response(request.app.state.catalogue.store, render["object_key"], name, "image/png",
                                     request.app.state.settings.s3_public_endpoint)


@router.get("/renders/{render_id}/thumb")
def thumbnail(request: Request, render_id: str, _who: Reader):
    render = views.render_row(request.app.state.catalogue, render_id)
    return downloads.object_response(request.app.state.catalogue.store, render["thumb_key"], f"{render_id}.webp",
                                     "image/webp", request.app.state.settings.s3_public_endpoint, attachment=False,
                                     cache=True)


@router.post("/renders/{render_id}/review")
def review_form(request: Request, render_id: str, who: Writer, status: Annotated[str, Form()],
                note: Annotated[str, Form()] = ""):
    catalogue = request.app.state.catalogue
    with catalogue.transaction() as session:
        review.record_review(session, render_id, status, note, who.name, catalogue.clock())
    return back_to(f"/renders/{render_id}#review", "/")


@router.post("/renders/{render_id}/rerender")
def rerender_form(request: Request, render_id: str, who: Writer,
                  sizes: Annotated[list[str], Form()] = [], custom: Annotated[str, Form()] = ""):  # noqa: B006
    chosen = actions.parse_sizes([*sizes, *custom.replace(";", ",").split(",")])
    actions.rerender(request.app.state.catalogue, render_id, chosen, who.name)
    return back_to(f"/renders/{render_id}#progress", "/")


@router.post("/renders/{render_id}/delete")
def delete_form(request: Request, render_id: str, who: Writer):
    actions.delete_render(request.app.state.catalogue, render_id, who.name)
    return back_to("/", "/")


@router.post("/jobs/{job_key}/retry")
def retry_form(request: Request, job_key: str, who: Writer, next: Annotated[str, Form()] = "/submissions"):
    actions.retry(request.app.state.catalogue, job_key, who.name)
    return back_to(next, "/submissions")


@router.post("/jobs/{job_key}/cancel")
def cancel_form(request: Request, job_key: str, who: Writer, next: Annotated[str, Form()] = "/submissions"):
    actions.cancel(request.app.state.catalogue, job_key, who.name)
    return back_to(next, "/submissions")


@router.post("/export")
def export_form(request: Request, who: Writer, destination: Annotated[str, Form()],
                render_ids: Annotated[list[str], Form()] = [], project: Annotated[str, Form()] = "",  # noqa: B006
                format: Annotated[str, Form()] = "png8", template: Annotated[str, Form()] = exporting.DEFAULT_TEMPLATE,
                metadata: Annotated[str, Form()] = "keep"):
    """Queue the delivery (or join the same one already running) and show its progress page."""
    target = actions.check_web_destination(destination, request.app.state.export_roots)
    options = exporting.ExportOptions(destination=target, format=format, template=template,
                                      keep_metadata=metadata == "keep")
    export, _joined = actions.queue_export(request.app.state.catalogue, request.app.state.exports, options, who.name,
                                           render_ids or None, project or None)
    return back_to(export["page"], "/exports")


@router.get("/exports", response_class=HTMLResponse)
def exports_page(request: Request, who: Reader):
    with request.app.state.catalogue.transaction() as session:
        items = for_viewer(exports.recent(session, 50), who)
    return page(request, "exports.html", who, exports=items,
                refresh=any(e["state"] in (EXPORT_QUEUED, EXPORT_RUNNING) for e in items))


@router.get("/exports/{export_id}", response_class=HTMLResponse)
def export_page(request: Request, export_id: str, who: Reader):
    found = for_viewer(views.export_detail(request.app.state.catalogue, export_id), who)
    return page(request, "export.html", who, export=found, refresh=found["state"] in (EXPORT_QUEUED, EXPORT_RUNNING))


# The page shows how a schedule is added: the command line does it (it registers the schedule with Prefect).
ADD_SCHEDULE_EXAMPLE = ('linstudio schedules add sunday-keyart --status approved --project night-city '
                        '--size 8192x4608 --cron "0 2 * * 0" --timezone Europe/Paris')


@router.get("/schedules", response_class=HTMLResponse)
def schedules_page(request: Request, who: Reader):
    """Every schedule; refreshes itself while a pause, resume or run now waits for the dispatcher."""
    items = for_viewer(views.schedule_list(request.app.state.catalogue), who)
    waiting = any(s["sync_pending"] or s["run_requested_at"] for s in items)
    return page(request, "schedules.html", who, schedules=items, add_example=ADD_SCHEDULE_EXAMPLE, refresh=waiting)


@router.post("/schedules/{name}/pause")
def pause_form(request: Request, name: str, who: Writer):
    actions.set_schedule_active(request.app.state.catalogue, name, False, who.name)
    return back_to(f"/schedules#schedule-{name}", "/schedules")


@router.post("/schedules/{name}/resume")
def resume_form(request: Request, name: str, who: Writer):
    actions.set_schedule_active(request.app.state.catalogue, name, True, who.name)
    return back_to(f"/schedules#schedule-{name}", "/schedules")


@router.post("/schedules/{name}/run")
def run_form(request: Request, name: str, who: Writer):
    actions.request_schedule_run(request.app.state.catalogue, name, who.name)
    return back_to(f"/schedules#schedule-{name}", "/schedules")


@router.get("/submissions", response_class=HTMLResponse)
def submissions_page(request: Request, who: Reader, team: str | None = None, before: str | None = None):
    with request.app.state.catalogue.transaction() as session:
        items = service.submissions(session, team, 50, before)
    older = f"/submissions?{urlencode({'before': items[-1]['submission_id']} | ({'team': team} if team else {}))}" \
        if len(items) == 50 else None
    return page(request, "submissions.html", who, submissions=for_viewer(items, who), team=team, older=older)


@router.get("/submissions/{submission_id}", response_class=HTMLResponse)
def submission_page(request: Request, submission_id: str, who: Reader):
    found = for_viewer(views.submission_detail(request.app.state.catalogue, submission_id), who)
    return page(request, "submission.html", who, submission=found)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/"):
    return page(request, "login.html", viewer(request), next=next, failed=False, refused=None)


@router.post("/login")
async def login(request: Request):
    """Sign in with a password, slowed by catalogue.web.throttle: an attempt while the account or the
    address must wait is answered 429 with Retry-After and a page saying when to try again."""
    await require_csrf(request)  # login CSRF: another site must not sign an artist in as someone else
    form = await request.form()
    name, password, target = (str(form.get(k, "")) for k in ("name", "password", "next"))
    return await run_in_threadpool(_sign_in, request, name, password, target)


def _sign_in(request: Request, name: str, password: str, target: str):
    # Three short transactions, scrypt (~50 ms) outside them: SQLite's single writer is never held by a KDF.
    catalogue = request.app.state.catalogue
    address = request.client.host if request.client else "unknown"
    now = catalogue.clock()
    with catalogue.transaction() as session:
        verdict = throttle.charge(session, name, address, now)
    if not verdict.allowed:
        wait = verdict.retry_after(now)
        log.warning("sign-in as %r from %s refused for %d s (%s; %d failures for the account, %d from the "
                    "address)", name[:200], address, wait, " and ".join(verdict.reasons), verdict.account_failures,
                    verdict.address_failures)
        return page(request, "login.html", None, status=429, next=target, failed=False,
                    refused=verdict.message(now), headers={"Retry-After": str(wait)})
    with catalogue.transaction() as session:
        record = auth.sign_in_record(session, name)
    if not auth.password_matches(record, password):
        log.info("failed sign-in as %r from %s (%d in a row for the account, %d from the address)", name[:200],
                 address, verdict.account_failures, verdict.address_failures)
        return page(request, "login.html", None, status=401, next=target, failed=True)
    if record.disabled:  # said only to someone who knows the password; the attempt stays charged
        log.warning("sign-in as disabled user %r from %s refused", record.name, address)
        return page(request, "login.html", None, status=403, next=target, failed=False,
                    refused=f"User {record.name} is disabled in this gallery.")
    with catalogue.transaction() as session:
        throttle.succeeded(session, name, address)
    response = back_to(target, "/")
    response.set_cookie(SESSION_COOKIE, request.app.state.signer.session_cookie(record.name, binding=record.binding),
                        max_age=auth.SESSION_SECONDS, httponly=True, samesite="lax",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request):
    await require_csrf(request)
    response = back_to("/", "/")
    response.delete_cookie(SESSION_COOKIE)
    return response


