"""Exports run in the background with progress (catalogue.web.exports, catalogue.web.export_runner).

A gate held in `convert` keeps an export running for as long as a test needs to look at it, so
"the request answered before the work was done", "the second request joined the first" and "no
more than LINSTUDIO_EXPORT_WORKERS ran at once" are observed, not assumed. One test makes a real
16384x16384 render and exports it while the API keeps answering.
"""

from __future__ import annotations

import io
import threading
import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from web_support import bearer, csrf_of, make_render, record, seed_catalogue, sign_in, wait_for_export

from catalogue import Catalogue
from catalogue import export as exporting
from catalogue.web import exports


class SlowConvert:
    """Wraps export.convert: each call waits for `gate`, and the most calls running at once is kept."""

    def __init__(self, real) -> None:
        self.real, self.gate = real, threading.Event()
        self.calls, self.running, self.most = [], 0, 0
        self._lock = threading.Lock()

    def __call__(self, data, render, options):
        with self._lock:
            self.calls.append((render["render_id"], options.format))
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            assert self.gate.wait(60), "the test never opened the gate"
            return self.real(data, render, options)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def slow(monkeypatch):
    slow = SlowConvert(exporting.convert)
    monkeypatch.setattr(exporting, "convert", slow)
    yield slow
    slow.gate.set()


def until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def export_of(client, token, destination, render_ids, **extra):
    return client.post("/api/export", json={"destination": str(destination), "render_ids": render_ids, **extra},
                       headers=bearer(token))


def test_an_api_export_is_queued_answered_at_once_and_written_in_the_background(client, web_cat, token, settings,
                                                                               tmp_path, slow):
    ids = seed_catalogue(web_cat)
    outside = export_of(client, token, tmp_path / "elsewhere", [ids["hero1"]])
    # Outside the allowed folders: the destination's published pattern refuses it (422, naming the field).
    assert outside.status_code == 422 and outside.json()["error"]["field"] == "body.destination"
    # `~` is refused alike for every account name, so the answer says nothing of which accounts exist.
    for home_relative in ("~root/x", "~nosuchuser-4e1d/x", "~/x", "file://~nosuchuser-4e1d/x"):
        refused = export_of(client, token, home_relative, [ids["hero1"]])
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "body.destination", \
            (home_relative, refused.text)
    nothing = client.post("/api/export", json={"destination": str(settings.home / "exports"), "project": "elves"},
                          headers=bearer(token))
    assert nothing.status_code == 404 and "nothing approved" in nothing.json()["error"]["message"]  # refused in the request

    target = settings.home / "exports" / "delivery"
    made = export_of(client, token, target, [ids["hero1"], ids["hero2"]], format="jpeg", template="{asset_id}_{seed}")
    assert made.status_code == 202, made.text
    export = made.json()
    assert export["state"] in ("queued", "running") and export["total"] == 2 and not export["joined"]
    until(lambda: client.get(export["url"]).json()["state"] == "running")
    assert not target.exists() or not list(target.iterdir())  # answered before a file was written
    slow.gate.set()
    done = wait_for_export(client, export["export_id"], **bearer(token))
    assert (done["state"], done["done"], done["error"]) == ("done", 2, None)
    assert sorted(p.name for p in target.iterdir()) == ["hero_1.jpg", "hero_2.jpg"]
    assert done["written"] == [(target / n).as_uri() for n in ("hero_1.jpg", "hero_2.jpg")]
    # Anonymous readers see the export's progress, not where on the server it wrote.
    seen = client.get(f"/api/exports/{export['export_id']}").json()
    assert seen["state"] == "done" and "written" not in seen and "destination" not in seen
    assert client.get("/api/exports").json()["items"][0]["export_id"] == export["export_id"]
    assert client.get("/api/exports/01ZZZZZZZZZZZZZZZZZZZZZZZZ").status_code == 404


def test_the_gallery_form_shows_the_export_progressing_on_its_page(client, web_cat, user, settings, slow):
    ids = seed_catalogue(web_cat)
    sign_in(client)
    target = settings.home / "exports" / "client-a"
    queued = client.post("/export", data={"csrf_token": csrf_of(client), "render_ids": [ids["hero1"], ids["forest"]],
                                          "destination": str(target), "format": "png16", "metadata": "strip",
                                          "template": "{team}/{asset_id}_{seed}"}, follow_redirects=False)
    assert queued.status_code == 303 and queued.headers["location"].startswith("/exports/")
    export_id = queued.headers["location"].rsplit("/", 1)[1]
    until(lambda: client.get(f"/api/exports/{export_id}").json()["state"] == "running")
    waiting = client.get(queued.headers["location"]).text
    assert "0 of 2 files written" in waiting and 'http-equiv="refresh"' in waiting and "running" in waiting
    assert export_id in client.get("/exports").text

    slow.gate.set()
    wait_for_export(client, export_id)
    finished = client.get(queued.headers["location"]).text
    assert "Exported 2 files" in finished and 'http-equiv="refresh"' not in finished
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*.png")) == ["film/hero_1.png",
                                                                                 "games/tree_5.png"]
    assert b"neon" not in (target / "film" / "hero_1.png").read_bytes()  # metadata stripped
    refused = client.post("/export", data={"csrf_token": csrf_of(client), "render_ids": [ids["hero1"]],
                                           "destination": "/etc/cron.d"})
    assert refused.status_code == 400


def test_the_same_selection_asked_twice_joins_the_first_export(client, web_cat, token, settings, slow, tmp_path):
    ids = seed_catalogue(web_cat)
    target = settings.home / "exports" / "twice"
    first = export_of(client, token, target, [ids["hero1"], ids["hero2"]]).json()
    again = export_of(client, token, target, [ids["hero2"], ids["hero1"], ids["hero1"]]).json()  # any order
    assert again["export_id"] == first["export_id"] and again["joined"] and not first["joined"]
    other = export_of(client, token, target, [ids["hero1"], ids["hero2"]], format="tiff").json()
    assert other["export_id"] != first["export_id"] and not other["joined"]  # another format: another export

    # A second gallery process (its own engine on the same database) joins it too.
    from catalogue.web import create_app

    url = web_cat.engine.url.render_as_string(hide_password=False)
    second_cat = Catalogue.open(url, web_cat.store.url, clock=web_cat.clock)
    try:
        with TestClient(create_app(second_cat, settings)) as second:
            joined = export_of(second, token, target, [ids["hero1"], ids["hero2"]]).json()
            assert joined["export_id"] == first["export_id"] and joined["joined"]
    finally:
        second_cat.close()

    slow.gate.set()
    for export in (first, other):
        assert wait_for_export(client, export["export_id"])["state"] == "done"
    assert sorted(slow.calls) == sorted([(ids["hero1"], "png8"), (ids["hero2"], "png8"),
                                         (ids["hero1"], "tiff"), (ids["hero2"], "tiff")])  # each file once
    fresh = export_of(client, token, target, [ids["hero1"], ids["hero2"]]).json()
    assert fresh["export_id"] != first["export_id"] and not fresh["joined"]  # finished: may be exported again


def test_no_more_exports_run_at_once_than_the_setting_allows(web_cat, settings, token, slow):
    from catalogue.web import create_app

    ids = seed_catalogue(web_cat)
    app = create_app(web_cat, settings.model_copy(update={"export_workers": 2}))
    with TestClient(app) as client:
        made = [export_of(client, token, settings.home / "exports" / f"d{n}", [ids["hero1"]]).json()
                for n in range(3)]
        until(lambda: slow.running == 2)
        time.sleep(0.3)  # a third worker, if there were one, would have started by now
        states = sorted(client.get(e["url"]).json()["state"] for e in made)
        assert states == ["queued", "running", "running"] and slow.most == 2
        slow.gate.set()
        assert [wait_for_export(client, e["export_id"])["state"] for e in made] == ["done"] * 3
    assert slow.most == 2


def test_failures_are_reported_on_the_export(client, web_cat, token, settings):
    ids = seed_catalogue(web_cat)
    blocked = settings.home / "exports" / "a-file"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")
    failed = wait_for_export(client, export_of(client, token, blocked, [ids["hero1"]]).json()["export_id"])
    assert failed["state"] == "failed" and "FileExistsError" in failed["error"] and str(blocked) in failed["error"]

    # A render deleted after its export was queued (and before a worker took it) fails it, by name.
    options = exporting.ExportOptions(destination=str(settings.home / "exports" / "late"))
    with web_cat.transaction() as session:
        queued, _ = exports.queue(session, options, [ids["hero1"], ids["forest"]], "alice", web_cat.clock())
    assert client.delete(f"/api/renders/{ids['forest']}", headers=bearer(token)).status_code == 200
    client.app.state.exports.wake()
    late = wait_for_export(client, queued["export_id"])
    assert late["state"] == "failed" and f"render {ids['forest']} was deleted" in late["error"]


def test_an_export_left_by_a_stopped_or_dead_gallery_is_run_again(web_cat, settings, token, slow):
    from catalogue.web import create_app

    ids = seed_catalogue(web_cat)
    target = settings.home / "exports" / "resumed"
    with TestClient(create_app(web_cat, settings)) as client:
        export = export_of(client, token, target, [ids["hero1"], ids["hero2"]]).json()
        until(lambda: slow.running == 1)
        threading.Timer(0.3, slow.gate.set).start()  # the file in hand finishes while the gallery stops
    with web_cat.transaction() as session:
        assert exports.get(session, export["export_id"])["state"] == "queued"  # put back, not lost

    # A worker that died holding an export: once its lease has run out, another takes it over.
    with web_cat.transaction() as session:
        assert exports.claim(session, "dead-host:1:0", web_cat.clock())["export_id"] == export["export_id"]
    web_cat.clock.now += timedelta(seconds=exports.LEASE_SECONDS + 1)
    with TestClient(create_app(web_cat, settings)) as client:
        client.app.state.exports.wake()
        assert wait_for_export(client, export["export_id"])["state"] == "done"
    assert sorted(p.name for p in target.rglob("*.png")) == ["hero_1_64x64.png", "hero_2_64x64.png"]


@pytest.mark.slow
def test_a_16k_export_does_not_hold_a_web_worker(client, web_cat, token, settings, monkeypatch):
    """A real 16384x16384 render exported as TIFF: the request answers at once and the API keeps answering
    while the export worker decodes and writes 268 M pixels. WebP, which cannot hold it, is refused up front."""
    render_id = make_render(web_cat, record("huge", 1, width=16384, height=16384), (200, 30, 30))
    target = settings.home / "exports" / "16k"
    refused = export_of(client, token, target, [render_id], format="webp")
    assert refused.status_code == 409 and f"render {render_id} is 16384x16384: webp holds at most 16383" in \
        refused.json()["error"]["message"]

    started = time.monotonic()
    made = export_of(client, token, target, [render_id], format="tiff")
    answered_in = time.monotonic() - started
    written_to = target / "film" / "night-city" / "huge_1_16384x16384.tif"
    assert made.status_code == 202 and not written_to.exists()  # answered before the file was written
    export_id, answered_while_running = made.json()["export_id"], 0
    while (state := client.get(f"/api/exports/{export_id}").json()["state"]) in ("queued", "running"):
        if state == "running":
            assert client.get("/api/renders").status_code == 200 and client.get("/").status_code == 200
            answered_while_running += 1
        time.sleep(0.05)
    export = wait_for_export(client, export_id)
    assert export["state"] == "done", export["error"]
    assert answered_while_running >= 3, answered_while_running  # pages kept coming while it ran
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(written_to) as tiff:
        assert tiff.size == (16384, 16384)
    print(f"16K export request answered in {answered_in:.2f} s; "
          f"{answered_while_running} status polls answered while it ran")


def test_png16_of_a_tall_image_is_exact_across_bands():
    """png16 encodes in bands of rows: the rows at a band's edges come out as they went in."""
    image = Image.new("RGB", (3, exporting.PNG16_BAND_ROWS + 5))
    for y in range(image.height):
        image.putpixel((1, y), (y % 256, 255 - y % 256, 7))
    data = exporting.png16(image, {})
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    assert decoded.size == image.size and data[24] == 16
    for y in (0, exporting.PNG16_BAND_ROWS - 1, exporting.PNG16_BAND_ROWS, image.height - 1):
        assert decoded.convert("RGB").getpixel((1, y)) == image.getpixel((1, y))


def test_a_catalogued_png_is_delivered_as_is_for_png8_with_metadata(web_cat, tmp_path):
    render = web_cat.render(make_render(web_cat, record()))
    original = web_cat.store.get(render["object_key"])
    assert exporting.convert(original, render, exporting.ExportOptions(destination=str(tmp_path))) == original
