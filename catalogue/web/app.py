"""The gallery application: wiring, error pages, cookies, security headers and request limits.

Every response carries SECURITY_HEADERS, and `Cache-Control: no-store` unless its route chose
otherwise (thumbnails) or it is a static file: pages hold the signed-in user's view and a CSRF
token bound to one browser, neither of which a shared cache may keep. Request bodies are limited
by catalogue.web.limits.

Errors never leak internals: the catalogue's own errors (which name the parameter, render or
option at fault, and never a credential) become 400/404/503 with their message; anything else is
logged with its traceback on the server and answered with a plain 500 and a reference.
"""

from __future__ import annotations

import logging
import re
import secrets
from contextlib import asynccontextmanager
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from catalogue import auth
from catalogue.api import Catalogue
from catalogue.errors import CatalogueError, ObjectNotFoundError
from catalogue.web import actions, contract, errors, limits, params, security
from catalogue.web.export_runner import ExportRunner


class BackgroundService(Protocol):
    """Something that runs beside the server (threads): started with it, stopped when it stops."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # No inline scripts at all: even an escaping bug could not run injected script.
    # blob: the 360° viewer (Pannellum) fetches the panorama and hands it to WebGL as a blob: URL.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob: https: http:; script-src 'self'; "
                               "style-src 'self'; frame-ancestors 'none'; form-action 'self'",
}


def create_app(catalogue: Catalogue, settings, background: Sequence[BackgroundService] = ()) -> FastAPI:
    """The gallery over an open, migrated `catalogue`, configured by `settings` (linstudio_settings.Settings).

    `background` are services that live as long as the server, handed in by whoever serves the
    gallery (`linstudio serve` passes the dispatcher that starts the re-renders the gallery asks
    for, flows.requests): the gallery itself imports nothing from orchestration.
    """
    # lazy: these import `catalogue.web`, whose __init__ imports this module: at the top they would
    # run while the package is half built
    from catalogue.web import api, deepzoom, pages

    runner = ExportRunner(catalogue, settings.export_workers)
    services: list[BackgroundService] = [runner, *background]

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # Start the export workers with the server: they also resume exports left queued by a stopped one.
        for service in services:
            service.start()
        try:
            yield
        finally:
            for service in reversed(services):
                service.stop()

    # No /docs or /redoc: they load scripts from a CDN (no network in the studio, and our CSP forbids it).
    # Operation ids are the route functions' names (`list_renders`), which generated clients name their calls by.
    # /openapi.json is catalogue.web.contract's (two versions: signed in or not).
    app = FastAPI(title="LinFusion Studio catalogue", version="1", docs_url=None, redoc_url=None, lifespan=lifespan,
                  openapi_url=None,
                  generate_unique_id_function=lambda route: route.name,
                  description="Browse, search, review, export and re-render catalogued renders. "
                              "Reads are open unless LINSTUDIO_READ_REQUIRES_LOGIN; changes need "
                              "`Authorization: Bearer TOKEN` (`linstudio tokens create NAME`).")
    app.state.catalogue = catalogue
    app.state.settings = settings
    app.state.signer = auth.Signer(auth.load_secret(settings.secret_key, settings.home))
    app.state.export_roots = [settings.home / "exports", *settings.shared_roots]
    app.state.destination_pattern = params.destination_pattern(app.state.export_roots)
    app.state.exports = runner
    app.state.templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                                      autoescape=select_autoescape(default=True), trim_blocks=True,
                                      lstrip_blocks=True)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(deepzoom.router)
    _install_middleware(app)
    _install_error_handlers(app)
    contract.install(app, app.state.export_roots, settings.read_requires_login)
    return app


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _install_middleware(app: FastAPI) -> None:
    app.add_middleware(limits.BodyLimits)  # inside the ones below, so its refusals get the headers too
    app.add_middleware(limits.RequestLimits)  # 414 / 431 before the body limits and authentication

    @app.middleware("http")
    async def authenticate_api_writes_first(request: Request, call_next):
        """An API write is authenticated before its body is read: FastAPI parses the body before it
        runs a route's dependencies, so anonymous broken JSON answered 422 or 400 instead of 401."""
        if request.method in WRITE_METHODS and request.url.path.startswith("/api/") \
                and request.method in allowed_methods(request):  # else the router's 404 or 405
            try:
                who = security.viewer(request)
            except StarletteHTTPException as exc:  # a wrong token, a disabled SSO user
                return error_response(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))
            if who is None:
                return error_response(request, 401, security.WRITE_REFUSAL, {"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.middleware("http")
    async def browser_cookie_and_headers(request: Request, call_next):
        known = request.cookies.get(security.BROWSER_COOKIE)
        request.state.browser_id = known or auth.new_browser_id()
        response = await call_next(request)
        if not known:
            response.set_cookie(security.BROWSER_COOKIE, request.state.browser_id, httponly=True, samesite="lax",
                                secure=request.url.scheme == "https")
        for header, value in SECURITY_HEADERS.items():
            response.headers.setdefault(header, value)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and request.url.path != "/openapi.json"


def error_response(request: Request, status: int, message: str, headers: dict | None = None,
                   field: str | None = None):
    """The API's one error body (catalogue.web.errors) for the API, a small HTML page for browsers."""
    if not wants_html(request):
        return JSONResponse(errors.body(status, message, field), status_code=status, headers=headers)
    if status == 401 and request.method == "GET":
        from fastapi.responses import RedirectResponse
        from urllib.parse import quote

        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
    template = request.app.state.templates.get_template("error.html")
    html = template.render(status=status, message=message, viewer=None, csrf_token="", request=request)
    return HTMLResponse(html, status_code=status, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path. Starlette answers a 405 with the methods of the
    first route whose path matched, so `/api/renders/{id}` (GET and DELETE, two routes) said `GET`.
    Each method is probed through the router (included routers nest, so routes are not a flat list)."""
    from starlette.routing import Match

    allowed = []
    for method in ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT"):
        scope = {"type": "http", "path": request.url.path, "root_path": "", "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def field_path(loc: Sequence) -> str:
    """`body.sizes.0` for pydantic's ("body", "sizes", 0, "function-after[_rerender_size(), str]"): a value
    that may take one of several forms (an export body, a re-render size) gets each form's label in its
    error locations (a model's class name, a validator's description), which names nothing a client
    sends. Every field and parameter of the API is a snake_case name, so only those and indexes stay."""
    return ".".join(str(part) for part in loc if isinstance(part, int) or _FIELD_NAME.fullmatch(str(part)))


_FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def _install_error_handlers(app: FastAPI) -> None:
    # Starlette's own HTTPException (FastAPI's is a subclass): the router's 404s and 405s raise it.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return error_response(request, exc.status_code, str(exc.detail), headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        found = [(field_path(e["loc"]), e["msg"]) for e in exc.errors()]
        problems = "; ".join(dict.fromkeys(f"{path}: {message}" for path, message in found))
        return error_response(request, 422, problems, field=found[0][0] if found else None)

    @app.exception_handler(CatalogueError)
    async def catalogue_error(request: Request, exc: CatalogueError):
        if isinstance(exc, (LookupError, ObjectNotFoundError)):  # actions.NotFound, unknown renders and jobs
            status = 404
        elif isinstance(exc, actions.Conflict):
            status = 409
        elif isinstance(exc, actions.Unavailable):
            status = 503
        else:
            status = 400
        return error_response(request, status, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        reference = secrets.token_hex(4)
        log.error("gallery error %s on %s %s", reference, request.method, request.url.path, exc_info=exc)
        return error_response(request, 500, f"internal error (reference {reference}; details are in the server log)")
