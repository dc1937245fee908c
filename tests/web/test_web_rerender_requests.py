"""The gallery asks for re-renders and retries by recording a request; the dispatcher in flows starts them.

The gallery imports nothing from orchestration (docs/architecture.md): its buttons plan jobs and
write a `rerender_requests` row, and flows.requests.RerenderDispatcher — run beside the gallery by
`linstudio serve` — claims each request, starts its jobs and marks it started. These tests play
both sides on the embedded SQLite catalogue, with a recording `start` in place of a render process.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from fastapi.testclient import TestClient
from web_support import bearer, make_render, png, record, requested_starts

from catalogue import Catalogue
from catalogue.web import actions
from flows.requests import RerenderDispatcher


def test_a_rerender_asked_for_before_a_restart_is_started_once_afterwards(web_cat, client, token, tmp_path):
    render_id = make_render(web_cat, record())
    made = client.post(f"/api/renders/{render_id}/rerender", json={"sizes": ["128x128"]}, headers=bearer(token))
    keys = made.json()["job_keys"]
    assert requested_starts(web_cat) == [keys]

    # The gallery process goes away; the next one opens the same catalogue afresh.
    after_restart = Catalogue.open(web_cat.engine.url.render_as_string(hide_password=False),
                                   (tmp_path / "store").as_uri(), clock=web_cat.clock)
    started: list[list[str]] = []
    try:
        dispatcher = RerenderDispatcher(after_restart, start=started.append)
        assert len(dispatcher.dispatch_waiting()) == 1
        assert started == [keys]
        assert dispatcher.dispatch_waiting() == [] and started == [keys]  # started once, not on every look
        assert requested_starts(web_cat) == []
    finally:
        after_restart.close()


def test_asking_again_requests_what_is_not_rendered_yet_and_nothing_once_it_is(web_cat):
    from sqlalchemy import select

    from catalogue.models import Job

    render_id = make_render(web_cat, record())
    (key,) = actions.rerender(web_cat, render_id, [(128, 128)], "alice")
    RerenderDispatcher(web_cat, start=lambda keys: None).dispatch_waiting()
    assert requested_starts(web_cat) == []
    assert actions.rerender(web_cat, render_id, [(128, 128)], "alice") == [key]  # the same job, planned already
    assert requested_starts(web_cat) == [[key]]  # not rendered yet: asked for again
    RerenderDispatcher(web_cat, start=lambda keys: None).dispatch_waiting()

    assert web_cat.claim(key, "w1", 600)  # a worker renders it
    with web_cat.transaction() as session:
        stored = session.scalar(select(Job.record).where(Job.key == key))
    web_cat.ingest(key, png((30, 200, 30), (128, 128)), {**stored, "engine": {}, "timings": {}}, "w1")
    assert actions.rerender(web_cat, render_id, [(128, 128)], "alice") == [key]
    assert requested_starts(web_cat) == []  # rendered: nothing to start


def test_the_same_rerender_posted_twice_starts_one_process_and_it_is_reaped(web_cat, client, token):
    import subprocess
    import sys

    render_id = make_render(web_cat, record())
    children: list[subprocess.Popen] = []

    def start(keys):  # a stand-in render process that lives until told to end
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        children.append(child)
        return child

    dispatcher = RerenderDispatcher(web_cat, start=start)
    for _ in range(2):
        made = client.post(f"/api/renders/{render_id}/rerender", json={"sizes": ["128x128"]}, headers=bearer(token))
        assert made.status_code == 202
    assert len(dispatcher.dispatch_waiting()) == 2  # both requests are answered...
    assert len(children) == 1 and dispatcher.reap() == 1  # ...by one process for the one job
    children[0].stdin.close()  # the render ends on its own
    deadline = time.monotonic() + 30
    while dispatcher.reap() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert children[0].returncode == 0  # collected by the dispatcher's reap: no zombie under the server
    assert requested_starts(web_cat) == []


def test_a_start_that_fails_is_tried_again_once_its_claim_is_stale(web_cat):
    submission = web_cat.create_submission("film", "night-city", "film/x.yaml", "0" * 64, 1)
    broken = record("broken", 4)
    web_cat.plan_jobs(submission, [broken])
    web_cat.fail(broken["key"], "CUDA out of memory")
    assert actions.retry(web_cat, broken["key"], "alice")["state"] == "planned"

    def prefect_down(_keys):
        raise ConnectionError("prefect server unreachable")

    assert RerenderDispatcher(web_cat, start=prefect_down).dispatch_waiting() == []
    started: list[list[str]] = []
    other = RerenderDispatcher(web_cat, start=started.append)
    assert other.dispatch_waiting() == [] and started == []  # still claimed by the first one
    web_cat.clock.now += timedelta(seconds=120)  # the first dispatcher's claim goes stale
    assert len(other.dispatch_waiting()) == 1 and started == [[broken["key"]]]


def test_the_gallery_runs_the_dispatcher_it_is_handed_and_stops_it_with_the_server(web_cat, settings, token):
    from catalogue.web import create_app

    render_id = make_render(web_cat, record())
    started = threading.Event()
    seen: list[list[str]] = []

    def start(keys):
        seen.append(keys)
        started.set()

    dispatcher = RerenderDispatcher(web_cat, start=start, poll_seconds=0.05)
    assert not dispatcher.running
    with TestClient(create_app(web_cat, settings, background=[dispatcher])) as client:
        assert dispatcher.running
        made = client.post(f"/api/renders/{render_id}/rerender", json={"sizes": ["128x128"]},
                           headers=bearer(token))
        assert started.wait(10), "the dispatcher never started the requested re-render"
    assert seen == [made.json()["job_keys"]]
    assert not dispatcher.running
