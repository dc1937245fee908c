"""Helpers for the gallery tests: clocks, tiny PNGs, job records, a seeded catalogue, signing in."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import socket
import threading
import time
from datetime import datetime, timedelta

from clocks import ManualClock  # noqa: F401  (re-exported for the web tests)
from PIL import Image

from catalogue import Catalogue


class StepClock:
    """A clock that moves one second per reading: renders made in a row get increasing ULIDs."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def csrf_of(client, path="/") -> str:
    """The CSRF token a page of ours gives this client's browser cookie."""
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text).group(1)


def try_sign_in(client, name="alice", password="correct horse battery", next_path="/"):
    """POST the sign-in form as a browser would (CSRF token from the sign-in page); returns the response."""
    return client.post("/login", data={"name": name, "password": password, "next": next_path,
                                       "csrf_token": csrf_of(client, "/login")}, follow_redirects=False)


def sign_in(client, name="alice", password="correct horse battery"):
    response = try_sign_in(client, name, password)
    assert response.status_code == 303, response.text
    return response


def png(color=(200, 30, 30), size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def record(asset_id="hero", seed=1, **overrides) -> dict:
    """A job record like linstudio_jobs' JobSpec.to_record(), keyed by its content."""
    shape = {"team": "film", "project": "night-city", "asset_id": asset_id, "prompt": "a neon street at night, rain",
             "negative_prompt": "blurry", "seed": seed, "width": 64, "height": 64, "model": "tiny-sd15",
             "model_identity": "sha256:" + hashlib.sha256(b"tiny").hexdigest(), "steps": 2, "guidance": 7.5,
             "scheduler": "ddim", "attention": "linear", "strategy": "direct", "tileable": False,
             "tags": ["street", "night"], "conditioning": {}, "parent_render_id": None,
             "manifest_path": "film/night-city.yaml", "manifest_line": 3}
    shape.update(overrides)
    identity = "/".join(str(shape[k]) for k in ("team", "project", "asset_id", "seed", "width", "height", "prompt",
                                                "model", "parent_render_id"))
    shape.setdefault("key", hashlib.sha256(identity.encode()).hexdigest())
    return shape


def make_render(cat: Catalogue, rec: dict, color=(200, 30, 30)) -> str:
    """Plan, claim and ingest one render of `rec`; returns its render id."""
    submission = cat.create_submission(rec["team"], rec["project"], rec["manifest_path"], "0" * 64, 1)
    cat.plan_jobs(submission, [rec])
    assert cat.claim(rec["key"], "w1", 600)
    full = {**rec, "engine": {"name": "tiny", "attention": "linear"}, "timings": {"render_s": 0.1}}
    return cat.ingest(rec["key"], png(color, (rec["width"], rec["height"])), full, "w1")


def requested_starts(cat: Catalogue) -> list[list[str]]:
    """The job keys of each rerender request the gallery recorded and nothing has started yet, oldest first."""
    from catalogue import rerender_requests

    with cat.transaction() as session:
        return [r["job_keys"] for r in rerender_requests.waiting(session)]


def seed_catalogue(cat: Catalogue) -> dict[str, str]:
    """A small studio catalogue: two teams, tags, sizes, a lineage, and a hostile prompt."""
    ids = {}
    ids["hero1"] = make_render(cat, record("hero", 1))
    ids["hero2"] = make_render(cat, record("hero", 2, model="tiny-sdxl"), (30, 200, 30))
    ids["big"] = make_render(cat, record("hero", 1, width=128, height=128, parent_render_id=ids["hero1"],
                                         prompt="a neon street at night, rain", tags=["street", "night", "big"]),
                             (30, 30, 200))
    ids["forest"] = make_render(cat, record("tree", 5, team="games", project="elves", prompt="ancient forests in fog",
                                            tags=["forest"]), (20, 120, 20))
    ids["evil"] = make_render(cat, record("evil", 9, prompt='<script>alert("x")</script> castle', tags=["<b>bold</b>"]),
                              (90, 90, 90))
    return ids


def seed_studio(cat: Catalogue) -> dict[str, str]:
    """seed_catalogue, plus what the API's other reads and writes need: a queued and a failed job in
    their own submission, an approved render (a project export has something to deliver), and a
    schedule that selects it (`ids["schedule"]`, its name)."""
    from catalogue import review

    ids = seed_catalogue(cat)
    queued, failed = record("queued", 7), record("broken", 8)
    ids["submission"] = cat.create_submission("film", "night-city", "film/x.yaml", "0" * 64, 2)
    cat.plan_jobs(ids["submission"], [queued, failed])
    cat.fail(failed["key"], "CUDA out of memory")
    ids["queued_job"], ids["failed_job"] = queued["key"], failed["key"]
    ids["approved"] = make_render(cat, record("approved", 3))
    with cat.transaction() as session:
        review.record_review(session, ids["approved"], "approved", "", "alice", cat.clock())
    ids["schedule"] = add_schedule(cat)  # selects the approved render
    return ids


def add_schedule(cat: Catalogue, name: str = "sunday-keyart", *, sizes=("128x128",), **fields) -> str:
    """Record a schedule as `linstudio schedules add` does (a cron one by default, selecting the approved
    renders of film/night-city); `fields` override the selection and the rest. Returns its name."""
    from catalogue.schedules import ScheduleRecord, Selection

    selection = fields.pop("selection", None) or Selection(team="film", project="night-city", status="approved")
    when = {"cron": "0 2 * * 0"} if "run_at" not in fields else {}
    cat.add_schedule(ScheduleRecord(name, selection, tuple(sizes), fields.pop("timezone", "Europe/Paris"),
                                    **when, created_by=fields.pop("created_by", "td"), **fields))
    return name


def wait_for_export(client, export_id: str, timeout: float = 60.0, **headers) -> dict:
    """Poll the API until the export has finished (done or failed); returns it."""
    deadline = time.monotonic() + timeout
    while True:
        export = client.get(f"/api/exports/{export_id}", headers=headers).json()
        if export["state"] in ("done", "failed"):
            return export
        assert time.monotonic() < deadline, f"export still {export['state']} after {timeout} s: {export}"
        time.sleep(0.05)


@contextlib.contextmanager
def served_over_http(app):
    """`app` served by uvicorn on a free 127.0.0.1 port in a thread of this process; yields (host, port)."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    from catalogue.web.limits import server_options

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **server_options()))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "gallery server did not start"
        time.sleep(0.05)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(10)
