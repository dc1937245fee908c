"""The JSON API and the form routes through FastAPI's TestClient: reads, reviews, auth, CSRF, safety."""

from __future__ import annotations

import re

import pytest
from web_support import bearer, csrf_of, make_render, record, requested_starts, seed_catalogue, sign_in

from catalogue.models import FAILED, PLANNED


def test_list_uses_the_cli_field_names_and_pages_with_next(client, web_cat, token):
    ids = seed_catalogue(web_cat)
    cli_shape = web_cat.renders(limit=1)[0]
    signed_in = client.get("/api/renders", params={"limit": 2}, headers=bearer(token)).json()
    assert set(cli_shape) <= set(signed_in["items"][0])
    body = client.get("/api/renders", params={"limit": 2}).json()
    assert set(body) == {"items", "next"}
    # Anonymous readers get the same fields less the server paths (catalogue/web/redact.py).
    assert set(cli_shape) - set(body["items"][0]) == {"object_uri", "thumb_uri"}
    assert body["items"][0]["render_id"] == ids["evil"]
    second = client.get("/api/renders", params={"limit": 2, "cursor": body["next"]}).json()
    assert [i["render_id"] for i in second["items"]] == [ids["big"], ids["hero2"]]
    found = client.get("/api/renders", params={"q": "forest", "team": "games"}).json()
    assert [i["render_id"] for i in found["items"]] == [ids["forest"]] and found["next"] is None


def test_openapi_describes_the_api(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/renders", "/api/renders/{render_id}/review", "/api/renders/{render_id}/rerender",
            "/api/export"} <= set(paths)
    assert not any(not p.startswith("/api/") for p in paths)  # pages stay out of the API description


def test_a_405_names_every_method_the_path_takes(client, web_cat):
    ids = seed_catalogue(web_cat)
    answer = client.put(f"/api/renders/{ids['hero1']}")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "DELETE, GET"  # GET and DELETE are two routes on one path


def test_anonymous_readers_see_no_server_paths_and_signed_in_ones_see_them(client, web_cat, token):
    secret_folder = "/srv/studio-secret-7f3a/manifests"
    render_id = make_render(web_cat, record("hero", 1, manifest_path=f"{secret_folder}/night.yaml"))
    submission_id = web_cat.render(render_id)["submission_id"]
    routes = ["/api/submissions", f"/api/submissions/{submission_id}", "/api/renders", f"/api/renders/{render_id}",
              "/submissions", f"/submissions/{submission_id}"]
    for route in routes:
        anonymous = client.get(route)
        assert anonymous.status_code == 200 and "studio-secret-7f3a" not in anonymous.text, route
    listed = client.get("/api/submissions").json()["items"][0]
    assert listed["manifest_name"] == "night.yaml" and "manifest_path" not in listed
    signed_in = client.get("/api/submissions", headers=bearer(token)).json()["items"][0]
    assert signed_in["manifest_path"] == f"{secret_folder}/night.yaml"


def test_an_anonymous_write_is_refused_before_its_body_is_read(client, web_cat):
    render_id = make_render(web_cat, record())
    for route in (f"/api/renders/{render_id}/review", "/api/export", f"/api/renders/{render_id}/rerender"):
        for body in (b'{"status": "appr', b"\xff\xfe not utf-8", b"[" * 100):
            answer = client.post(route, content=body, headers={"Content-Type": "application/json"})
            assert answer.status_code == 401, (route, body, answer.status_code, answer.text)
            assert answer.headers["www-authenticate"] == "Bearer"
    assert client.post(f"/api/renders/{render_id}/review", content=b"{", headers={
        "Content-Type": "application/json", "Authorization": "Bearer wrong"}).status_code == 401


def test_dates_are_iso_text_never_unix_timestamps(client, web_cat):
    seed_catalogue(web_cat)
    for number in ("0", "1764979200", "-1"):
        refused = client.get("/api/renders", params={"date_to": number})
        assert refused.status_code == 422 and "YYYY-MM-DD" in refused.text, (number, refused.text)
    assert client.get("/api/renders", params={"date_from": "2020-01-01", "date_to": "2099-12-31"}).status_code == 200


def test_review_needs_someone_and_history_records_who(client, web_cat, token):
    render_id = make_render(web_cat, record())
    refused = client.post(f"/api/renders/{render_id}/review", json={"status": "approved"})
    assert refused.status_code == 401
    assert client.post(f"/api/renders/{render_id}/review", json={"status": "approved"},
                       headers=bearer("lst_wrong")).status_code == 401
    made = client.post(f"/api/renders/{render_id}/review", json={"status": "changes_requested", "note": "warmer"},
                       headers=bearer(token))
    assert made.status_code == 201 and made.json()["reviewer"] == "token:pipeline-bot"
    client.post(f"/api/renders/{render_id}/review", json={"status": "approved"}, headers=bearer(token))
    history = client.get(f"/api/renders/{render_id}/reviews").json()
    assert [(h["status"], h["note"]) for h in history] == [("approved", ""), ("changes_requested", "warmer")]
    assert client.get("/api/renders", params={"status": "approved"}).json()["items"][0]["render_id"] == render_id
    assert client.post(f"/api/renders/{render_id}/review", json={"status": "great"},
                       headers=bearer(token)).status_code == 422


def test_form_posts_need_a_session_and_a_csrf_token(client, web_cat, user):
    render_id = make_render(web_cat, record())
    anonymous = client.post(f"/renders/{render_id}/review", data={"status": "approved", "csrf_token": csrf_of(client)},
                            follow_redirects=False)
    assert anonymous.status_code in (303, 401)  # sent to sign in, nothing recorded
    sign_in(client)
    forged = client.post(f"/renders/{render_id}/review", data={"status": "approved", "note": "x"},
                         follow_redirects=False)
    assert forged.status_code == 403 and "CSRF" in forged.text
    wrong = client.post(f"/renders/{render_id}/review", data={"status": "approved", "csrf_token": "nope"},
                        follow_redirects=False)
    assert wrong.status_code == 403
    assert client.get(f"/api/renders/{render_id}/reviews").json() == []
    ok = client.post(f"/renders/{render_id}/review", data={"status": "approved", "note": "ship it",
                                                          "csrf_token": csrf_of(client)}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"].startswith(f"/renders/{render_id}")
    assert client.get(f"/api/renders/{render_id}/reviews").json()[0]["reviewer"] == "alice"


def test_wrong_password_and_forged_session_are_refused(client, user, web_cat):
    render_id = make_render(web_cat, record())
    bad = client.post("/login", data={"name": "alice", "password": "wrong password", "csrf_token": csrf_of(client)})
    assert bad.status_code == 401 and "Wrong name or password" in bad.text
    client.cookies.set("linstudio_session", "alice|9999999999|forged")
    assert client.post(f"/api/renders/{render_id}/review", json={"status": "approved"},
                       headers={"X-CSRF-Token": csrf_of(client)}).status_code == 401


def test_trusted_sso_header_signs_in_when_configured(web_cat, settings):
    from fastapi.testclient import TestClient

    from catalogue.web import create_app

    render_id = make_render(web_cat, record())
    app = create_app(web_cat, settings.model_copy(update={"auth_header": "X-Forwarded-User"}))
    with TestClient(app) as client:
        client.headers["X-Forwarded-User"] = "bob"
        page = client.get(f"/renders/{render_id}")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        assert client.post(f"/renders/{render_id}/review", data={"status": "rejected", "csrf_token": token},
                           follow_redirects=False).status_code == 303
        assert client.get(f"/api/renders/{render_id}/reviews").json()[0]["reviewer"] == "bob"


def test_reading_can_be_closed(web_cat, settings, token):
    from fastapi.testclient import TestClient

    from catalogue.web import create_app

    app = create_app(web_cat, settings.model_copy(update={"read_requires_login": True}))
    with TestClient(app) as client:
        assert client.get("/api/renders").status_code == 401
        assert client.get("/", follow_redirects=False).headers["location"].startswith("/login")
        assert client.get("/api/renders", headers=bearer(token)).status_code == 200


def test_prompts_tags_and_notes_are_shown_escaped(client, web_cat, token):
    ids = seed_catalogue(web_cat)
    client.post(f"/api/renders/{ids['evil']}/review", json={"status": "rejected", "note": "<img src=x onerror=alert(1)>"},
                headers=bearer(token))
    for path in ("/", f"/renders/{ids['evil']}", "/?q=castle"):
        html = client.get(path).text
        assert "<script>alert" not in html and "<b>bold</b>" not in html and "<img src=x" not in html
    page = client.get(f"/renders/{ids['evil']}").text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; castle" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "script-src 'self'" in client.get("/").headers["content-security-policy"]


def test_downloads_serve_catalogued_objects_only(client, web_cat):
    render_id = make_render(web_cat, record())
    original = client.get(f"/renders/{render_id}/download")
    assert original.status_code == 200 and original.content.startswith(b"\x89PNG")
    assert "attachment" in original.headers["content-disposition"]
    assert client.get(f"/renders/{render_id}/thumb").headers["content-type"] == "image/webp"
    for attempt in ("../../catalogue.db", "..%2F..%2Fcatalogue.db", "%2e%2e%2f%2e%2e%2fsecret_key",
                    "renders%2Ffilm%2Fnight-city"):
        response = client.get(f"/renders/{attempt}/download")
        assert response.status_code == 404, attempt
        assert b"SQLite" not in response.content and b"Traceback" not in response.content


def test_errors_never_leak_tracebacks(client, web_cat, monkeypatch, token):
    from catalogue.web import service

    render_id = make_render(web_cat, record())

    def explode(*_args):
        raise RuntimeError("password=hunter2 at postgresql://admin:secret@db")

    monkeypatch.setattr(service, "siblings", explode)
    for response in (client.get(f"/renders/{render_id}"), client.get(f"/api/renders/{render_id}")):
        assert response.status_code == 500
        assert "hunter2" not in response.text and "secret" not in response.text and "Traceback" not in response.text
        assert "reference" in response.text


def test_rerender_queues_through_the_rerender_flow_and_progress_shows(client, web_cat, token):
    render_id = make_render(web_cat, record())
    assert client.post(f"/api/renders/{render_id}/rerender", json={"sizes": ["128x128"]}).status_code == 401
    bad = client.post(f"/api/renders/{render_id}/rerender", json={"sizes": ["100x72"]}, headers=bearer(token))
    assert bad.status_code == 422 and "multiple of 8" in bad.json()["error"]["message"]  # the spec's pattern
    made = client.post(f"/api/renders/{render_id}/rerender", json={"sizes": ["128x128", [256, 128]]},
                       headers=bearer(token))
    assert made.status_code == 202
    keys = made.json()["job_keys"]
    assert len(keys) == 2 and requested_starts(web_cat) == [keys]
    assert web_cat.job_states(keys) == {key: PLANNED for key in keys}
    detail = client.get(f"/api/renders/{render_id}").json()
    assert {(j["width"], j["height"], j["state"]) for j in detail["rerender_jobs"]} == {(128, 128, PLANNED),
                                                                                       (256, 128, PLANNED)}
    assert 'http-equiv="refresh"' in client.get(f"/renders/{render_id}").text  # the page follows progress
    assert client.post("/api/renders/01ZZZZZZZZZZZZZZZZZZZZZZZZ/rerender", json={"sizes": ["128x128"]},
                       headers=bearer(token)).status_code == 404


def test_retry_cancel_and_delete(client, web_cat, token):
    done_id = make_render(web_cat, record("a", 1))
    queued, broken = record("b", 2), record("c", 3)
    submission = web_cat.create_submission("film", "night-city", "film/x.yaml", "0" * 64, 2)
    web_cat.plan_jobs(submission, [queued, broken])
    web_cat.fail(broken["key"], "CUDA out of memory")
    wrong_state = client.post(f"/api/jobs/{queued['key']}/retry", headers=bearer(token))
    assert wrong_state.status_code == 409 and wrong_state.json()["error"]["code"] == "conflict"
    assert client.post(f"/api/jobs/{broken['key']}/retry", headers=bearer(token)).json()["state"] == PLANNED
    assert requested_starts(web_cat) == [[broken["key"]]]
    cancelled = client.post(f"/api/jobs/{queued['key']}/cancel", headers=bearer(token)).json()
    assert cancelled["state"] == FAILED and cancelled["error"] == "cancelled by token:pipeline-bot"
    assert client.post(f"/api/jobs/{queued['key']}/cancel", headers=bearer(token)).status_code == 409  # failed now
    sub = client.get(f"/api/submissions/{submission}").json()
    assert sub["jobs"] == {"planned": 1, "running": 0, "done": 0, "failed": 1}
    assert client.delete(f"/api/renders/{done_id}").status_code == 401
    assert client.delete(f"/api/renders/{done_id}", headers=bearer(token)).json() == {"deleted": done_id}
    assert web_cat.render(done_id) is None
    assert list(web_cat.store.list("renders")) == [] and list(web_cat.store.list("thumbs")) == []
    assert client.get(f"/renders/{done_id}").status_code == 404


def test_submissions_show_status_errors_and_their_renders(client, web_cat):
    from catalogue import submissions as lifecycle
    from web_support import png

    a, b = record("a", 1), record("b", 2)
    submission = web_cat.create_submission("film", "night-city", "film/y.yaml", "0" * 64, 2)
    web_cat.plan_jobs(submission, [a, b])
    with web_cat.transaction() as session:
        lifecycle.set_queued(session, submission, "alice")
    assert client.get(f"/api/submissions/{submission}").json()["status"] == "queued"
    with web_cat.transaction() as session:
        assert lifecycle.transition(session, submission, "queued", "running", web_cat.clock())
    web_cat.claim(a["key"], "w1", 600)
    web_cat.fail(a["key"], "boom <b>")
    web_cat.claim(b["key"], "w1", 600)
    web_cat.ingest(b["key"], png(), {**b, "engine": {}, "timings": {}}, "w1")
    with web_cat.transaction() as session:
        lifecycle.finish(session, submission, "failed", "1 of 2 jobs failed", web_cat.clock())
    detail = client.get(f"/api/submissions/{submission}").json()
    assert (detail["status"], detail["error"], detail["submitted_by"]) == ("failed", "1 of 2 jobs failed", "alice")
    assert detail["errors"][0]["error"] == "boom <b>"
    assert [r["asset_id"] for r in detail["renders"]] == ["b"]
    page = client.get(f"/submissions/{submission}").text
    assert "boom &lt;b&gt;" in page and "Retry" in page and f"/renders/{detail['renders'][0]['render_id']}" in page
    listing = client.get("/api/submissions").json()["items"]
    assert listing[0]["submission_id"] == submission and listing[0]["jobs"] == {"planned": 0, "running": 0,
                                                                               "done": 1, "failed": 1}


def test_status_is_derived_from_jobs_when_a_submission_has_none():
    from collections import Counter

    from catalogue.web.service import derived_status

    assert derived_status(Counter(planned=2)) == "queued"
    assert derived_status(Counter(planned=1, done=1)) == "running"
    assert derived_status(Counter(running=1, failed=1)) == "running"
    assert derived_status(Counter(failed=1, done=3)) == "failed"
    assert derived_status(Counter(done=3)) == "done"


@pytest.mark.parametrize("path", ["/renders/NOPE", "/submissions/NOPE", "/api/renders/01ZZZZZZZZZZZZZZZZZZZZZZZZ"])
def test_unknown_things_are_404(client, path):
    assert client.get(path).status_code == 404


def test_a_malformed_api_id_is_invalid_input_naming_it(client):
    refused = client.get("/api/renders/NOPE")
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "path.render_id"


def test_downloads_on_both_backends_stream_or_presign(both_cat, catalogue_urls, settings):
    import httpx
    from fastapi.testclient import TestClient

    from catalogue.web import create_app

    render_id = make_render(both_cat, record())
    original = both_cat.store.get(both_cat.render(render_id)["object_key"])
    with TestClient(create_app(both_cat, settings)) as client:
        response = client.get(f"/renders/{render_id}/download", follow_redirects=False)
        if catalogue_urls.kind == "embedded":
            assert response.status_code == 200 and response.content == original
            return
        assert response.status_code == 307  # S3: a presigned URL, fetched straight from the store
        fetched = httpx.get(response.headers["location"])
        assert fetched.content == original, (response.headers["location"], fetched.text[:300])
    public = settings.model_copy(update={"s3_public_endpoint": "https://s3.studio.example"})
    with TestClient(create_app(both_cat, public)) as client:
        location = client.get(f"/renders/{render_id}/download", follow_redirects=False).headers["location"]
        assert location.startswith("https://s3.studio.example/") and "Signature" in location


def test_an_invalid_body_names_the_fields_a_client_sends(client, web_cat, token, settings):
    """A value with several accepted forms (an export body, a re-render size) is refused naming its field,
    not pydantic's labels for the forms (`ExportOfRenders`, `function-after[...]`)."""
    render_id = make_render(web_cat, record())
    neither = client.post("/api/export", json={"destination": str(settings.home / "exports")}, headers=bearer(token))
    assert neither.status_code == 422 and neither.json()["error"]["field"] == "body.render_ids"
    assert neither.json()["error"]["message"] == "body.render_ids: Field required; body.project: Field required"
    odd = client.post(f"/api/renders/{render_id}/rerender", json={"sizes": ["100x72"]}, headers=bearer(token))
    assert odd.status_code == 422 and odd.json()["error"]["field"] == "body.sizes.0"


def test_nul_in_free_text_is_invalid_input_on_both_backends(both_cat, settings):
    """PostgreSQL refuses NUL in text and JSON, so `team=%00` answered 500 there (200 on SQLite); the
    OpenAPI's free-text patterns leave NUL out and the server refuses it alike, naming the field."""
    from fastapi.testclient import TestClient

    from catalogue.auth import create_token
    from catalogue.web import create_app

    render_id = make_render(both_cat, record())
    with both_cat.transaction() as session:
        token = create_token(session, "nul-bot", both_cat.clock())
    with TestClient(create_app(both_cat, settings), raise_server_exceptions=False) as client:
        for name in ("q", "team", "project", "tag", "model"):
            refused = client.get("/api/renders", params={name: "a\x00b"})
            assert refused.status_code == 422 and refused.json()["error"]["field"] == f"query.{name}", refused.text
        assert client.get("/api/submissions", params={"team": "\x00"}).status_code == 422
        note = client.post(f"/api/renders/{render_id}/review", json={"status": "approved", "note": "a\x00"},
                           headers=bearer(token))
        assert note.status_code == 422 and note.json()["error"]["field"] == "body.note"
        for body in ({"project": "night\x00"}, {"project": "night-city", "template": "{seed}\x00"}):
            export = client.post("/api/export", json={"destination": str(settings.home / "exports"), **body},
                                 headers=bearer(token))
            assert export.status_code == 422, export.text
