"""The gallery's OpenAPI: FastAPI's document, finished with what FastAPI cannot say on its own.

- The bearer token as a security scheme (`bearerAuth`), and per operation who may call it:
  writes need a token; reads take one or none, unless LINSTUDIO_READ_REQUIRES_LOGIN. Generated
  clients then know how to authenticate, and a fuzzer can check that writes refuse anonymity.
- The export destinations this server takes, as a pattern naming its own export folders
  (catalogue.web.params.destination_pattern; the route enforces the same pattern), on the fields
  marked DESTINATION_MARK. Only signed-in readers get those folders (`install`).
- FastAPI's default validation-error schemas (`HTTPValidationError`), which no answer uses any
  more: every error answers catalogue.web.errors.ErrorBody, declared per operation by the routes.
"""

from __future__ import annotations

from typing import Any

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from catalogue.web import params, security

BEARER = "bearerAuth"
# Marks the request fields that take an export destination; `finish` gives them this server's pattern.
DESTINATION_MARK = "x-export-destination"
WRITE_METHODS = ("post", "put", "patch", "delete")
UNUSED_SCHEMAS = ("HTTPValidationError", "ValidationError")


def install(app: FastAPI, roots: list[Path], read_requires_login: bool) -> None:
    """Serve the finished document at /openapi.json, in two versions built once each: the signed-in
    one names this server's export folders in the destination pattern; the anonymous one does not
    (anonymous readers see no server path, catalogue.web.redact) and takes any absolute folder there,
    which they cannot export to anyway. `app.openapi()` answers the signed-in one."""
    built: dict[bool, dict[str, Any]] = {}

    def document(signed_in: bool) -> dict[str, Any]:
        if signed_in not in built:
            plain = get_openapi(title=app.title, version=app.version, description=app.description,
                                routes=app.routes)
            built[signed_in] = finish(plain, params.destination_pattern(roots if signed_in else None),
                                      read_requires_login)
        return built[signed_in]

    app.openapi = lambda: document(signed_in=True)  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_json(request: Request) -> JSONResponse:
        return JSONResponse(document(signed_in=security.viewer(request) is not None))


def finish(document: dict[str, Any], destination_pattern: str, read_requires_login: bool) -> dict[str, Any]:
    components = document.setdefault("components", {})
    components["securitySchemes"] = {BEARER: {
        "type": "http", "scheme": "bearer",
        "description": "An API token from `linstudio tokens create NAME`, sent as `Authorization: Bearer TOKEN`."}}
    signed_in = [{BEARER: []}]
    for operations in document.get("paths", {}).values():
        for method, operation in operations.items():
            writes = method in WRITE_METHODS
            operation["security"] = signed_in if writes or read_requires_login else [{}, *signed_in]
    schemas = components.get("schemas", {})
    for name in UNUSED_SCHEMAS:
        schemas.pop(name, None)
    for schema in schemas.values():
        for field in schema.get("properties", {}).values():
            if field.pop(DESTINATION_MARK, False):
                field["pattern"] = destination_pattern
    return document
