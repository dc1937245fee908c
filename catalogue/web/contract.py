"""The gallery's OpenAPI: FastAPI's document, finished with what FastAPI cannot say on its own.

- The bearer token as a security scheme (`bearerAuth`), and per operation who may call it:
  writes need a token; reads take one or none, unless LINSTUDIO_READ_REQUIRES_LOGIN. Generated
  clients then know how to authenticate, and a fuzzer can check that writes refuse anonymity.
- The export destinations this server takes, as a pattern naming its own export folders
  (catalogue.web.params.destination_pattern; the route enforces the same pattern), on the fields
  marked DESTINATION_MARK.
- FastAPI's default validation-error schemas (`HTTPValidationError`), which no answer uses any
  more: every error answers catalogue.web.errors.ErrorBody, declared per operation by the routes.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

BEARER = "bearerAuth"
# Marks the request fields that take an export destination; `finish` gives them this server's pattern.
DESTINATION_MARK = "x-export-destination"
WRITE_METHODS = ("post", "put", "patch", "delete")
UNUSED_SCHEMAS = ("HTTPValidationError", "ValidationError")


def install(app: FastAPI, destination_pattern: str, read_requires_login: bool) -> None:
    """Make `app.openapi()` answer the finished document (built once, then cached like FastAPI's)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            app.openapi_schema = finish(document, destination_pattern, read_requires_login)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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
