"""Request bodies the gallery will read: at most MAX_BODY_BYTES, and JSON nested at most MAX_JSON_DEPTH deep.

Nothing the gallery accepts comes near either limit (the largest body is an export of 5000 render
ids, ~150 KB), so anything bigger is refused before the application sees it:
- a declared `Content-Length` over the limit gets 413 at once, before a byte of the body is read;
- a body without one (chunked) is read only until it passes the limit, then 413 (the connection is
  closed, so the rest is never read);
- JSON nested deeper than MAX_JSON_DEPTH gets 400 before it is parsed: Python's parser would
  recurse once per level (a megabyte of `[` is half a million levels).
A pure ASGI middleware, so the body is counted as it arrives, not after something buffered it.
"""

from __future__ import annotations

import json
import re

from catalogue.web import errors

MAX_BODY_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
MAX_TARGET_BYTES = 8192  # path and query: the longest real one (a search with every filter) is ~1 KB
MAX_HEADER_BYTES = 32768  # all header names and values together
# What the HTTP parser itself buffers before it gives up (`linstudio serve` passes it to uvicorn):
# well above the two limits above, so a long URL or header block reaches `RequestLimits` and is
# answered 414 / 431 instead of the connection being dropped.
PARSER_BUFFER_BYTES = 1 << 20
_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_STRUCTURE = re.compile(rb'[\[\]{}"\\]')  # the only bytes that change the nesting depth or string state


def server_options() -> dict:
    """The uvicorn options the limits rely on (`linstudio serve` and the tests pass them)."""
    return {"h11_max_incomplete_event_size": PARSER_BUFFER_BYTES}


class RequestLimits:
    """ASGI middleware answering a request target over `MAX_TARGET_BYTES` with 414 and a header block
    over `MAX_HEADER_BYTES` with 431, before any route or body is looked at."""

    def __init__(self, app, max_target: int = MAX_TARGET_BYTES, max_headers: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_target = max_target
        self.max_headers = max_headers

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            target = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
            if target > self.max_target:
                await _refuse(send, 414, f"request target of {target} bytes: the gallery reads at most "
                                         f"{self.max_target}")
                return
            headers = sum(len(name) + len(value) for name, value in scope["headers"])
            if headers > self.max_headers:
                await _refuse(send, 431, f"request headers of {headers} bytes: the gallery reads at most "
                                         f"{self.max_headers}")
                return
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    pass


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON `body` nests arrays/objects deeper than `limit` (brackets inside strings do not count).

    Scans only the structural bytes, so a large flat body costs little and a deep one stops at `limit`.
    """
    depth, in_string, escaped_at = 0, False, -1
    for match in _STRUCTURE.finditer(body):
        char, at = match.group(), match.start()
        if in_string:
            if at == escaped_at:  # the byte right after a backslash: escaped, whatever it is
                continue
            if char == b"\\":
                escaped_at = at + 1
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif char in (b"]", b"}"):
            depth -= 1
    return False


class BodyLimits:
    """ASGI middleware refusing request bodies over `max_bytes` (413) and JSON deeper than `max_depth` (400)."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES, max_depth: int = MAX_JSON_DEPTH) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _refuse(send, 413, f"request body of {int(declared)} bytes: the gallery accepts at most "
                                     f"{self.max_bytes} bytes")
            return
        try:
            body = await self._read(receive)
        except BodyTooLarge:
            await _refuse(send, 413, f"request body over {self.max_bytes} bytes: the gallery accepts at most "
                                     f"{self.max_bytes} bytes")
            return
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        # FastAPI parses a body without a content type as JSON too.
        if content_type in (b"", b"application/json") or content_type.endswith(b"+json"):
            if json_depth_exceeds(body, self.max_depth):
                await _refuse(send, 400, f"JSON body nested deeper than {self.max_depth} levels")
                return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect, when the client goes

        await self.app(scope, replay, send)

    async def _read(self, receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps(errors.body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
