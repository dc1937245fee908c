"""Scheduled re-renders in the gallery: the Schedules page, a render's schedules, and /api/schedules.

The gallery never talks to Prefect: a pause, resume or run now is recorded in the catalogue
(`sync_pending`, `run_requested_at`) for the dispatcher in flows to pass on. These tests play that
dispatcher with `Catalogue.mark_schedule_synced`, as flows does once Prefect has been told.
"""

from __future__ import annotations

import re

import pytest
from web_support import add_schedule, bearer, csrf_of, make_render, record, seed_catalogue, sign_in

from catalogue import review
from catalogue.schedules import LastRun, Selection

ACTIONS = ("pause", "resume", "run")


@pytest.fixture
def scheduled(web_cat):
    """Renders, one of them approved, and two schedules: `sunday-keyart` (cron, selects the approved
    render) and `launch-night` (once, by render id, paused already, with a finished run)."""
    ids = seed_catalogue(web_cat)
    with web_cat.transaction() as session:
        review.record_review(session, ids["hero1"], "approved", "", "alice", web_cat.clock())
    add_schedule(web_cat)
    add_schedule(web_cat, "launch-night", sizes=("256x256", "512x512"), run_at=web_cat.clock(),
                 selection=Selection(render_ids=(ids["forest"],)), timezone="UTC")
    web_cat.set_schedule_active("launch-night", False, synced=True)
    web_cat.record_schedule_run("launch-night", LastRun(web_cat.clock(), "completed", made=3, skipped=1, failed=0,
                                                        flow_run_id="flow-1"))
    return ids


def flows_catches_up(cat, name: str) -> None:
    """What the dispatcher in flows does once Prefect has the wanted state and the run asked for."""
    wanted = cat.schedule(name)
    cat.mark_schedule_synced(name, active=wanted.active, run_requested_at=wanted.run_requested_at, next_run_at=None)


# -- the API -------------------------------------------------------------------------------------------


def test_the_api_lists_every_schedule_as_the_cli_json_shows_it(client, web_cat, scheduled, token):
    listed = client.get("/api/schedules")
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert [s["name"] for s in items] == ["launch-night", "sunday-keyart"]
    for item in items:
        cli_json = web_cat.schedule(item["name"]).to_json()
        assert item == cli_json | {"sync_pending": False, "run_requested_at": None}
    once, weekly = items
    assert weekly["selection"] == {"team": "film", "project": "night-city", "status": "approved"}
    assert weekly["selection_text"] == "team film, project night-city, status approved"
    assert (weekly["cron"], weekly["at"], weekly["timezone"], weekly["active"]) == ("0 2 * * 0", None,
                                                                                    "Europe/Paris", True)
    assert once["cron"] is None and once["at"] and once["active"] is False
    assert once["last_run"] | {"at": None} == {"at": None, "state": "completed", "made": 3, "skipped": 1, "failed": 0,
                                               "flow_run_id": "flow-1"}
    assert client.get("/api/schedules", headers=bearer(token)).json()["items"] == items  # nothing to redact


def test_pause_resume_and_run_need_a_token(client, web_cat, scheduled):
    before = web_cat.schedules()
    for action in ACTIONS:
        anonymous = client.post(f"/api/schedules/sunday-keyart/{action}")
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
        assert anonymous.json()["error"]["code"] == "unauthorized"
        assert client.post(f"/api/schedules/sunday-keyart/{action}", headers=bearer("lst_wrong")).status_code == 401
    assert web_cat.schedules() == before


def test_a_pause_and_a_resume_are_accepted_and_wait_for_flows_to_tell_prefect(client, web_cat, scheduled, token):
    paused = client.post("/api/schedules/sunday-keyart/pause", headers=bearer(token))
    assert paused.status_code == 202
    assert (paused.json()["active"], paused.json()["sync_pending"]) == (False, True)
    stored = web_cat.schedule("sunday-keyart")
    assert (stored.active, stored.sync_pending) == (False, True)
    assert [s.name for s in web_cat.pending_schedules()] == ["sunday-keyart"]
    again = client.post("/api/schedules/sunday-keyart/pause", headers=bearer(token))
    assert again.status_code == 202 and again.json() == paused.json()  # paused already: nothing changes

    flows_catches_up(web_cat, "sunday-keyart")
    assert client.get("/api/schedules").json()["items"][1]["sync_pending"] is False
    resumed = client.post("/api/schedules/sunday-keyart/resume", headers=bearer(token))
    assert resumed.status_code == 202 and (resumed.json()["active"], resumed.json()["sync_pending"]) == (True, True)
    assert (web_cat.schedule("sunday-keyart").active, web_cat.schedule("sunday-keyart").sync_pending) == (True, True)
    flows_catches_up(web_cat, "sunday-keyart")
    unchanged = client.post("/api/schedules/sunday-keyart/resume", headers=bearer(token))
    assert (unchanged.json()["active"], unchanged.json()["sync_pending"]) == (True, False)
    assert web_cat.pending_schedules() == []


def test_run_now_asks_for_one_run_until_flows_has_started_it(client, web_cat, scheduled, token):
    asked = client.post("/api/schedules/launch-night/run", headers=bearer(token))  # paused: a run now still runs
    assert asked.status_code == 202
    requested_at = web_cat.schedule("launch-night").run_requested_at
    assert requested_at is not None and asked.json()["run_requested_at"] == requested_at.isoformat()
    assert (asked.json()["active"], asked.json()["sync_pending"]) == (False, False)  # the state is untouched
    twice = client.post("/api/schedules/launch-night/run", headers=bearer(token))
    assert twice.json()["run_requested_at"] == requested_at.isoformat()  # a double click asks for no second run
    assert web_cat.schedule("launch-night").run_requested_at == requested_at
    flows_catches_up(web_cat, "launch-night")
    assert web_cat.schedule("launch-night").run_requested_at is None and web_cat.pending_schedules() == []
    later = client.post("/api/schedules/launch-night/run", headers=bearer(token)).json()
    assert later["run_requested_at"] is not None and later["run_requested_at"] != requested_at.isoformat()


def test_an_unknown_schedule_is_404_and_a_malformed_name_422_naming_it(client, web_cat, scheduled, token):
    before = web_cat.schedules()
    for action in ACTIONS:
        missing = client.post(f"/api/schedules/no-such-schedule/{action}", headers=bearer(token))
        assert missing.status_code == 404
        assert missing.json() == {"error": {"code": "not_found", "message": "schedule no-such-schedule: not in the "
                                                                            "catalogue", "field": None}}
        malformed = client.post(f"/api/schedules/Sunday%20Keyart/{action}", headers=bearer(token))
        assert malformed.status_code == 422 and malformed.json()["error"]["field"] == "path.name"
    assert web_cat.schedules() == before


def test_the_openapi_declares_every_answer_of_the_schedule_routes(client):
    spec = client.get("/openapi.json").json()
    listing = spec["paths"]["/api/schedules"]["get"]
    assert listing["operationId"] == "list_schedules"
    assert listing["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SchedulePage"}
    for action, operation_id in zip(ACTIONS, ("pause_schedule", "resume_schedule", "run_schedule"), strict=True):
        operation = spec["paths"][f"/api/schedules/{{name}}/{action}"]["post"]
        assert operation["operationId"] == operation_id and "202 Accepted" in operation["description"]
        assert {"202", "401", "403", "404", "422"} <= set(operation["responses"])
        assert "200" not in operation["responses"]
        assert operation["responses"]["404"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"}
        assert operation["security"] == [{"bearerAuth": []}]
        (name,) = operation["parameters"]
        assert name["in"] == "path" and name["schema"]["pattern"] == "^[a-z0-9][a-z0-9._-]{0,63}$"
    schedule = spec["components"]["schemas"]["Schedule"]
    assert {"name", "selection", "selection_text", "sizes", "cron", "at", "timezone", "active", "next_run",
            "last_run", "sync_pending", "run_requested_at"} <= set(schedule["required"])


def test_a_renders_api_detail_names_the_schedules_that_select_it(client, web_cat, scheduled):
    assert client.get(f"/api/renders/{scheduled['hero1']}").json()["schedules"] == ["sunday-keyart"]
    assert client.get(f"/api/renders/{scheduled['forest']}").json()["schedules"] == ["launch-night"]
    assert client.get(f"/api/renders/{scheduled['hero2']}").json()["schedules"] == []


# -- the pages -----------------------------------------------------------------------------------------


def row(html: str, name: str) -> str:
    """The Schedules page's table row of schedule `name`, tags and spacing folded to plain words."""
    found = re.search(rf'<tr id="schedule-{re.escape(name)}".*?</tr>', html, re.DOTALL)
    assert found, f"no row for {name}"
    return " ".join(re.sub(r"<[^>]+>", " ", found.group(0)).split())


def test_the_schedules_page_lists_them_read_only_for_anonymous_readers(client, web_cat, scheduled):
    assert '<a href="/schedules">Schedules</a>' in client.get("/").text  # in the navigation
    page = client.get("/schedules")
    assert page.status_code == 200
    weekly = row(page.text, "sunday-keyart")
    assert "team film, project night-city, status approved" in weekly and "128x128" in weekly
    assert "0 2 * * 0" in weekly and "Europe/Paris" in weekly and "active" in weekly and "not run yet" in weekly
    once = row(page.text, "launch-night")
    assert f"renders {scheduled['forest']}" in once and "256x256, 512x512" in once and "once," in once
    assert "paused" in once and "completed" in once and "3 made, 1 skipped, 0 failed" in once
    assert "pending" not in page.text and "run requested" not in page.text
    assert "<form" not in page.text.split("<main>")[1] and "Run now" not in page.text  # read-only
    assert 'href="/login?next=/schedules"' in page.text
    assert ('linstudio schedules add sunday-keyart --status approved --project night-city --size 8192x4608 '
            '--cron &#34;0 2 * * 0&#34; --timezone Europe/Paris') in page.text  # the command to copy
    assert 'http-equiv="refresh"' not in page.text  # nothing waits for flows


def test_a_signed_in_user_pauses_resumes_and_runs_now_from_the_page(client, web_cat, scheduled, user):
    sign_in(client)
    page = client.get("/schedules").text
    assert 'action="/schedules/sunday-keyart/pause"' in page and 'action="/schedules/launch-night/resume"' in page
    assert page.count(">Run now</button>") == 2
    token = csrf_of(client, "/schedules")
    paused = client.post("/schedules/sunday-keyart/pause", data={"csrf_token": token}, follow_redirects=False)
    assert paused.status_code == 303 and paused.headers["location"] == "/schedules#schedule-sunday-keyart"
    assert (web_cat.schedule("sunday-keyart").active, web_cat.schedule("sunday-keyart").sync_pending) == (False, True)
    page = client.get("/schedules").text
    assert "pause pending" in row(page, "sunday-keyart") and 'http-equiv="refresh"' in page  # follows flows
    assert 'action="/schedules/sunday-keyart/resume"' in page

    client.post("/schedules/launch-night/run", data={"csrf_token": token})
    assert web_cat.schedule("launch-night").run_requested_at is not None
    assert "run requested" in row(client.get("/schedules").text, "launch-night")
    client.post("/schedules/launch-night/resume", data={"csrf_token": token})
    assert "resume pending" in row(client.get("/schedules").text, "launch-night")

    for name in ("sunday-keyart", "launch-night"):
        flows_catches_up(web_cat, name)
    page = client.get("/schedules").text
    assert "pending" not in page and "run requested" not in page and 'http-equiv="refresh"' not in page
    assert "paused" in row(page, "sunday-keyart") and "active" in row(page, "launch-night")


def test_page_posts_need_a_session_and_a_csrf_token(client, web_cat, scheduled, user):
    before = web_cat.schedules()
    for action in ACTIONS:
        anonymous = client.post(f"/schedules/sunday-keyart/{action}", data={"csrf_token": csrf_of(client)},
                                follow_redirects=False)
        assert anonymous.status_code == 401
    sign_in(client)
    for action in ACTIONS:
        forged = client.post(f"/schedules/sunday-keyart/{action}", data={"csrf_token": "forged"},
                             follow_redirects=False)
        assert forged.status_code == 403 and "CSRF" in forged.text
    assert web_cat.schedules() == before
    missing = client.post("/schedules/no-such-schedule/pause", data={"csrf_token": csrf_of(client)})
    assert missing.status_code == 404 and "schedule no-such-schedule: not in the catalogue" in missing.text


def test_a_render_page_names_the_schedules_that_select_it(client, web_cat, scheduled):
    selected = client.get(f"/renders/{scheduled['hero1']}").text
    section = selected.split('id="schedules"')[1].split("</section>")[0]
    assert '<a href="/schedules#schedule-sunday-keyart">sunday-keyart</a>' in section
    assert "launch-night" not in section
    alone = client.get(f"/renders/{scheduled['hero2']}").text.split('id="schedules"')[1].split("</section>")[0]
    assert "No schedule selects this render" in alone and 'href="/schedules"' in alone


def test_an_empty_catalogue_says_so_and_a_selection_is_shown_escaped(client, web_cat):
    assert "No schedules yet." in client.get("/schedules").text
    make_render(web_cat, record())
    add_schedule(web_cat, "tagged", selection=Selection(tag='<img src=x onerror=alert(1)>'))
    page = client.get("/schedules").text
    assert "<img src=x" not in page and "tag &lt;img src=x onerror=alert(1)&gt;" in page
