"""One error body for every API error, and the status codes each operation declares.

Every error the JSON API answers, whatever raised it (a route, FastAPI's validation, the router's
404/405, the body limits, the sign-in throttle), has the same body, so a generated client reads
any error with one type:

    {"error": {"code": "not_found", "message": "render abc: not in the catalogue", "field": null}}

`code` is a fixed word per status (`CODES`), `message` the sentence a person reads, `field` the
parameter or body field at fault when there is one (`query.date_to`, `body.status`).
The OpenAPI declares this body for each status an operation can return (`responses`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

CODES: dict[int, str] = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "payload_too_large", 414: "uri_too_long", 422: "invalid_input",
    429: "too_many_requests", 431: "headers_too_large", 500: "internal", 503: "unavailable",
}
DESCRIPTIONS: dict[int, str] = {
    400: "The request is well-formed but refused (the message says why).",
    401: "No credentials, or a wrong or revoked API token (`Authorization: Bearer TOKEN`).",
    403: "The credentials may not do this (a disabled user, a missing CSRF token).",
    404: "No such render, job, submission, export or schedule.",
    409: "The thing is not in a state that allows this (a job that is not failed or queued).",
    413: "The request body is over the gallery's limit.",
    414: "The path and query are over the gallery's limit (8 KB).",
    422: "A parameter or body field does not match this description (`field` names it).",
    429: "Too many attempts: wait the `Retry-After` seconds.",
    431: "The request headers are over the gallery's limit (32 KB).",
    503: "The gallery cannot take more of this now (a full export queue): try again later.",
}


class ErrorDetail(BaseModel):
    code: Literal[tuple(sorted(set(CODES.values())))]  # type: ignore[valid-type]
    message: str
    field: str | None = Field(default=None, description="The parameter or body field at fault, when one is.")


class ErrorBody(BaseModel):
    """What every API error answers."""

    error: ErrorDetail


def body(status: int, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": CODES.get(status, "bad_request" if status < 500 else "internal"), "message": message,
                      "field": field}}


# What any API request may meet before its route runs: limits on the request line and headers
# (catalogue.web.limits), a wrong or revoked token (401), a disabled single-sign-on user (403).
ANY_REQUEST = (401, 403, 414, 431)
# ...and what a write may meet too: bodies over the limit (413) or nested too deep (400).
ANY_WRITE = (*ANY_REQUEST, 400, 413)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of an operation: the shared error body for each of `statuses`, plus 422."""
    return {status: {"model": ErrorBody, "description": DESCRIPTIONS[status]}
            for status in sorted({*statuses, 422})}
