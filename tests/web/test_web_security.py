"""Security checks over the whole gallery, with routes enumerated from the app itself: a route added
later is checked without anyone remembering to add it here (and fails here until it is safe).

- every state-changing route refuses a browser credential without the right CSRF token;
- every route taking a render (or job, submission, export) id refuses ids that do not exist with
  404, no route takes a path, and the store is only ever asked for keys the catalogue holds;
- every response carries the CSP (with frame-ancestors), nosniff and, for pages, no-store;
- a 50 MB body is refused before it is read, and deeply nested JSON before it is parsed.
(Sign-in timing is checked in test_web_signin.py: unknown names run the same KDF.)
"""

from __future__ import annotations

import select as selectors
import socket
import time

import pytest
from fastapi.testclient import TestClient
from starlette.convertors import PathConvertor
from web_support import (add_schedule, bearer, csrf_of, make_render, record, seed_catalogue, served_over_http,
                         sign_in)

from catalogue.models import Review
from catalogue.web import exports

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# (A bare ".." is not here: the HTTP client itself folds "/renders/.." into "/" before sending.)
UNKNOWN_IDS = ["01ZZZZZZZZZZZZZZZZZZZZZZZZ", "NOPE", "%2e%2e", "..%2F..%2Fcatalogue.db",
               "renders%2Ffilm%2Fnight-city%2Fhero.png"]
ID_PARAMS = ("render_id", "job_key", "submission_id", "export_id", "name")  # name: a schedule's


def flat_routes(candidates):
    """Every route, with included routers opened up (FastAPI >= 0.150 keeps an included router as one
    entry of `app.routes`; its `effective_route_contexts` are the routes with their full paths)."""
    for route in candidates:
        if hasattr(route, "effective_route_contexts"):
            yield from route.effective_route_contexts()
        else:
            yield route


def routes(app, methods=None):
    """(method, path template, route) for every route of the app, optionally only those methods."""
    for route in flat_routes(app.routes):
        for method in sorted(getattr(route, "methods", None) or ()):
            if methods is None or method in methods:
                yield method, route.path, getattr(route, "original_route", route)


@pytest.fixture
def studio(web_cat, settings, user, token):
    """The gallery with renders, a failed job, a finished export, a submission and a schedule; ids to fill
    paths with."""
    ids = seed_catalogue(web_cat)
    failed = record("broken", 4)
    submission = web_cat.create_submission("film", "night-city", "film/x.yaml", "0" * 64, 1)
    web_cat.plan_jobs(submission, [failed])
    web_cat.fail(failed["key"], "CUDA out of memory")
    from catalogue.export import ExportOptions

    with web_cat.transaction() as session:
        export, _ = exports.queue(session, ExportOptions(destination=str(settings.home / "exports")), [ids["hero1"]],
                                  "alice", web_cat.clock())
    values = {"render_id": ids["hero1"], "job_key": failed["key"], "submission_id": submission,
              "export_id": export["export_id"], "name": add_schedule(web_cat), "level": "0", "tile_name": "0_0.jpg"}
    return web_cat, values, ids


def fill(path: str, values: dict) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"{path}: give this test a value for its path parameter"
    return path


def plausible_body(path: str, ids: dict, settings) -> dict:
    """Fields that would make each change succeed if the request were let through."""
    fields = {"status": "approved", "note": "forged", "sizes": ["128x128"],
              "destination": str(settings.home / "exports"), "render_ids": [ids["hero1"]], "name": "alice", "password": "correct horse battery", "next": "/"}
    if path.startswith("/api/"):
        return {"json": fields}
    return {"data": {**fields, "sizes": "128x128"}}


def csrf_failures(app, studio, settings) -> list[str]:
    """Every (route, credential, token) a state change got through without the right CSRF token."""
    web_cat, values, ids = studio
    failures = []
    with TestClient(app, raise_server_exceptions=False) as victim, TestClient(app) as other:
        sign_in(victim)
        someone_elses = csrf_of(other)  # a real token, but bound to another browser
        attempts = {"no token": {}, "forged header": {"X-CSRF-Token": "forged"},
                    "another browser's token": {"X-CSRF-Token": someone_elses}}
        for method, path, _ in routes(app, UNSAFE_METHODS):
            url = fill(path, values)
            body = plausible_body(path, ids, settings)
            for credential, extra in (("session", {}), ("sso header", {"X-Forwarded-User": "mallory"})):
                for name, headers in attempts.items():
                    kwargs = dict(body)
                    if name == "forged header" and "data" in kwargs:
                        kwargs["data"] = {**kwargs["data"], "csrf_token": "forged"}  # the form field, too
                    response = victim.request(method, url, headers={**headers, **extra}, follow_redirects=False,
                                              **kwargs)
                    if response.status_code != 403 or "CSRF" not in response.text:
                        failures.append(f"{method} {path} with {credential} and {name}: {response.status_code}")
    return failures


def test_every_state_changing_route_refuses_a_missing_or_wrong_csrf_token(web_cat, studio, settings):
    from catalogue.web import create_app

    app = create_app(web_cat, settings.model_copy(update={"auth_header": "X-Forwarded-User"}))
    changing = {f"{m} {p}" for m, p, _ in routes(app, UNSAFE_METHODS)}
    assert {"POST /login", "POST /logout", "POST /export", "POST /api/export", "POST /renders/{render_id}/review",
            "DELETE /api/renders/{render_id}", "POST /jobs/{job_key}/retry", "POST /schedules/{name}/pause",
            "POST /api/schedules/{name}/resume"} <= changing  # the enumeration works
    before = snapshot(web_cat)
    assert csrf_failures(app, studio, settings) == []
    assert snapshot(web_cat) == before  # nothing changed


def test_a_new_unprotected_route_cannot_slip_past_the_csrf_check(web_cat, studio, settings):
    from catalogue.web import create_app

    app = create_app(web_cat, settings.model_copy(update={"auth_header": "X-Forwarded-User"}))

    @app.post("/api/renders/{render_id}/pin")
    def pin(render_id: str):  # forgot the Writer dependency
        return {"pinned": render_id}

    assert csrf_failures(app, studio, settings) == [
        f"POST /api/renders/{{render_id}}/pin with {c} and {t}: 200" for c in ("session", "sso header")
        for t in ("no token", "forged header", "another browser's token")]


def snapshot(cat) -> dict:
    from sqlalchemy import func, select

    from catalogue.models import Export, Job, Render, Schedule

    with cat.transaction() as session:
        return {"reviews": session.scalar(select(func.count()).select_from(Review)),
                "renders": session.scalar(select(func.count()).select_from(Render)),
                "exports": session.scalar(select(func.count()).select_from(Export)),
                "jobs": sorted(session.execute(select(Job.key, Job.state, Job.error)).all()),
                "schedules": sorted(session.execute(select(Schedule.name, Schedule.active, Schedule.sync_pending,
                                                           Schedule.run_requested_at)).all())}


def test_every_route_taking_an_id_refuses_unknown_ones_and_none_takes_a_path(client, studio, token, settings,
                                                                             monkeypatch):
    web_cat, values, ids = studio
    app = client.app
    for method, path, route in routes(app):
        convertors = getattr(route, "param_convertors", {})
        assert not any(isinstance(c, PathConvertor) for c in convertors.values()), f"{path} takes a path"
    catalogued = set()
    for render_id in ids.values():
        render = web_cat.render(render_id)
        catalogued |= {render["object_key"], render["thumb_key"]}
    asked = []
    for name in ("get", "stream", "exists", "size"):
        real = getattr(web_cat.store, name)
        monkeypatch.setattr(web_cat.store, name, lambda key, _real=real: asked.append(key) or _real(key))

    checked = []
    for method, path, route in routes(app):
        params = [p for p in ID_PARAMS if "{" + p + "}" in path]
        if not params or path.startswith("/static"):
            continue
        for unknown in UNKNOWN_IDS:
            url = fill(path, {**values, **{p: unknown for p in params}})
            response = client.request(method, url, headers=bearer(token), follow_redirects=False,
                                      **plausible_body(path, ids, settings))
            # The API states its id patterns (OpenAPI), so a malformed id is refused as invalid input there.
            refused = {404, 422} if path.startswith("/api/") else {404}
            assert response.status_code in refused, (method, url, response.status_code, response.text[:200])
            assert b"Traceback" not in response.content
        checked.append(f"{method} {path}")
    assert {"GET /renders/{render_id}/download", "GET /renders/{render_id}/thumb", "GET /api/renders/{render_id}",
            "GET /api/renders/{render_id}/reviews", "POST /api/renders/{render_id}/review",
            "GET /exports/{export_id}", "POST /jobs/{job_key}/cancel", "POST /schedules/{name}/pause",
            "POST /api/schedules/{name}/run"} <= set(checked)
    assert client.get(f"/renders/{ids['hero1']}/download").status_code == 200
    assert asked and set(asked) <= catalogued, set(asked) - catalogued  # only keys the catalogue holds


def test_a_download_streams_the_object_and_never_loads_it_whole(client, web_cat, monkeypatch):
    render_id = make_render(web_cat, record())
    original = web_cat.store.get(web_cat.render(render_id)["object_key"])

    def refuse(key):
        raise AssertionError(f"download read all of {key} into memory")

    monkeypatch.setattr(web_cat.store, "get", refuse)
    assert client.get(f"/renders/{render_id}/download").content == original


def test_every_page_sends_the_security_headers_and_signed_in_pages_are_never_cached(client, studio, user):
    _, values, _ = studio
    sign_in(client)
    seen = []
    for method, path, _ in routes(client.app, {"GET"}):
        if path.startswith("/static"):
            continue
        response = client.get(fill(path, values), follow_redirects=False)
        seen.append(path)
        csp = response.headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
        assert response.headers.get("x-content-type-options") == "nosniff", path
        assert response.headers.get("x-frame-options") == "DENY", path
        cache = response.headers.get("cache-control", "")
        if path.endswith(("/thumb", "/image")):  # a render id's thumbnail and PNG never change
            assert cache.startswith("private") and "public" not in cache, (path, cache)
        else:
            assert cache == "no-store", (path, cache)
    assert {"/", "/renders/{render_id}", "/exports/{export_id}", "/api/renders", "/login", "/schedules",
            "/api/schedules"} <= set(seen)
    missing = client.get("/renders/NOPE")
    assert missing.status_code == 404 and missing.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in missing.headers["content-security-policy"]


def raw_request(port: int, head: bytes, chunks, pause: float = 0.0) -> tuple[bytes, int]:
    """Send `head` then `chunks` until the server answers; returns (the answer, body bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head)
        for chunk in chunks:
            readable, _, _ = selectors.select([conn], [], [], pause)
            if readable:
                break
            try:
                conn.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        answer = b""
        conn.settimeout(10)
        try:
            while b"\r\n\r\n" not in answer and (data := conn.recv(65536)):
                answer += data
        except ConnectionResetError:
            pass
    return answer, sent


def test_a_50_mb_body_is_refused_before_it_is_read(app, web_cat, token):
    render_id = make_render(web_cat, record())
    fifty_mb, piece = 50 * 2**20, b"x" * 65536
    with served_over_http(app) as (_, port):
        started = time.monotonic()
        declared = (f"POST /api/renders/{render_id}/review HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {fifty_mb}\r\n\r\n").encode()
        answer, sent = raw_request(port, declared, (piece for _ in range(fifty_mb // len(piece))), pause=0.01)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < 2**20, f"the server let {sent} bytes in before refusing"  # it did not wait for the 50 MB
        chunked = (f"POST /api/renders/{render_id}/review HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n").encode()
        frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        answer, sent = raw_request(port, chunked, (frame for _ in range(fifty_mb // len(piece))), pause=0.01)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < 4 * 2**20, f"the server read {sent} bytes of a chunked body before refusing"
        elapsed = time.monotonic() - started
    print(f"50 MB bodies refused in {elapsed:.2f} s")
    with web_cat.transaction() as session:
        assert session.query(Review).count() == 0


def test_a_long_url_or_header_block_is_answered_414_or_431_not_dropped(app, web_cat):
    with served_over_http(app) as (_, port):
        for request, status in (
                (f"GET /api/renders?q={'x' * 200_000} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"414"),
                (f"GET /api/renders HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {'y' * 200_000}\r\n\r\n", b"431"),
                ("GET /api/renders HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 + "".join(f"X-H{i}: {'z' * 100}\r\n" for i in range(400)) + "\r\n", b"431")):
            answer, _ = raw_request(port, request.encode(), iter(()))
            assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]


def test_deeply_nested_json_is_refused_before_it_is_parsed(client, web_cat, token):
    render_id = make_render(web_cat, record())
    url = f"/api/renders/{render_id}/review"
    for body in ("[" * 200_000 + "]" * 200_000, '{"a":' * 50_000 + "1" + "}" * 50_000):
        for content_type in ("application/json", None):
            headers = bearer(token) | ({"Content-Type": content_type} if content_type else {})
            response = client.post(url, content=body, headers=headers)
            assert response.status_code == 400, (content_type, response.status_code)
            assert "nested deeper than 32 levels" in response.json()["error"]["message"]
    # Brackets inside strings are text, not nesting: a note full of them is recorded.
    fine = client.post(url, json={"status": "approved", "note": "[[[{{{" * 100 + '\\"['}, headers=bearer(token))
    assert fine.status_code == 201, fine.text


def test_the_openapi_names_the_export_folders_only_to_the_signed_in(client, settings, token):
    """Anonymous readers see no server path (finding 8), the spec included; a token holder's spec states
    the export folders this server writes to, as the destination's pattern."""
    anonymous = client.get("/openapi.json")
    signed_in = client.get("/openapi.json", headers=bearer(token))
    assert anonymous.status_code == signed_in.status_code == 200
    home = str(settings.home.resolve())
    assert home not in anonymous.text and home.replace("/", "\\/") not in anonymous.text
    destination = signed_in.json()["components"]["schemas"]["ExportOfRenders"]["properties"]["destination"]
    assert str((settings.home / "exports").resolve()) in destination["pattern"]
    assert client.get("/openapi.json", headers=bearer("lst_wrong")).status_code == 401
