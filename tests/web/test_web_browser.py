"""The gallery in a real browser (Debian's Chromium driven by Playwright), with JavaScript turned off:
search, filter, open an asset, follow the lineage, approve with a note, ask for a bigger render,
pause a schedule.

One server (uvicorn in a thread of this process) and one browser serve the whole module. The
screenshots in docs/screenshots/ come from real shapes-sd15 renders (bench/screenshots.py), not
from this module's made-up catalogue.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from web_support import (StepClock, add_schedule, make_render, png, record, requested_starts, seed_catalogue,
                         served_over_http)

from catalogue.models import Job

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A seeded catalogue served over HTTP: yields (base_url, catalogue, ids, requested starts).

    Requested starts: a function giving the job keys of each rerender request the gallery recorded;
    no dispatcher runs here, the test plays the render worker (below)."""

    from catalogue import Catalogue
    from catalogue.auth import add_user
    from catalogue.web import create_app
    from linstudio.settings import Settings

    root = tmp_path_factory.mktemp("gallery")
    cat = Catalogue.open(f"sqlite:///{root / 'catalogue.db'}", (root / "store").as_uri(),
                         clock=StepClock(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)))
    cat.migrate()
    ids = seed_catalogue(cat)
    for seed, colour in ((3, (240, 160, 40)), (4, (120, 40, 200)), (7, (40, 180, 220))):
        make_render(cat, record("hero", seed), colour)
    with cat.transaction() as session:
        add_user(session, "alice", "correct horse battery", cat.clock())
    app = create_app(cat, Settings(home=root / "home", secret_key="browser-test-secret-0123"))
    with served_over_http(app) as (host, port):
        yield f"http://{host}:{port}", cat, ids, lambda: requested_starts(cat)
    cat.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install -y --no-install-recommends chromium (see .ci/run)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
    dialogs = []
    tab = context.new_page()
    tab.on("dialog", lambda dialog: dialogs.append(dialog.message))
    yield tab
    context.close()
    assert dialogs == [], f"a script ran: {dialogs}"


def screenshot(page, name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_search_and_filter(page, studio, tmp_path):
    base, _, ids, _ = studio
    page.goto(base + "/")
    assert page.locator(".tile").count() == 8
    screenshot(page, "gallery.png", tmp_path)
    page.fill("input[name=q]", "forests")
    page.click("button:has-text('Search')")
    assert page.locator(".tile .asset").all_inner_texts() == ["games/elves/tree"]
    page.goto(base + "/")
    page.select_option("select[name=model]", "tiny-sdxl")
    page.click("button:has-text('Search')")
    assert page.locator(".tile").count() == 1 and "model=tiny-sdxl" in page.url
    assert page.locator(f"a[href='/renders/{ids['hero2']}']").count() >= 1


def test_open_an_asset_and_follow_its_lineage(page, studio):
    base, _, ids, _ = studio
    page.goto(base + "/?q=neon&size=64x64")
    page.click(f".tile a.asset[href='/renders/{ids['hero1']}']")
    assert page.url.endswith(f"/renders/{ids['hero1']}")
    assert page.locator("#siblings .tile").count() == 6  # every render of film/night-city/hero
    assert page.locator("#settings").inner_text().count("tiny-sd15") >= 1
    child = page.locator("#lineage a", has_text="128×128")
    child.click()
    assert page.url.endswith(f"/renders/{ids['big']}")
    assert page.locator("#lineage a", has_text="64×64 seed 1").count() == 1  # its source, above it
    download = page.locator("a:has-text('Download original PNG')").get_attribute("href")
    assert download == f"/renders/{ids['big']}/download"


def test_hostile_prompt_shows_as_text(page, studio):
    base, _, ids, _ = studio
    page.goto(base + f"/renders/{ids['evil']}")
    assert '<script>alert("x")</script> castle' in page.locator("#prompt").inner_text()


def test_sign_in_approve_with_a_note_and_ask_for_a_bigger_render(page, studio, tmp_path):
    base, cat, ids, requested = studio
    target = ids["hero2"]
    page.goto(base + f"/renders/{target}")
    page.click("text=Sign in")
    page.fill("input[name=name]", "alice")
    page.fill("input[name=password]", "correct horse battery")
    page.click("button:has-text('Sign in')")
    assert page.url.endswith(f"/renders/{target}")
    page.fill("textarea[name=note]", "Lovely light; ship it.")
    page.click("button:has-text('Approve')")
    history = page.locator("#review .history li").first.inner_text()
    assert "approved" in history and "alice" in history and "Lovely light; ship it." in history

    page.check("input[name=sizes][value='128x128']")
    page.click("button:has-text('Queue re-render')")
    assert page.locator("#progress .jobs").inner_text().count("planned") == 1
    started = requested()
    assert len(started) == 1
    # Play the render worker: take the planned job and catalogue its result.
    (key,) = started[0]
    assert cat.job_states([key]) == {key: "planned"}
    assert cat.claim(key, "w9", 600)
    with cat.transaction() as session:
        stored = session.scalar(select(Job.record).where(Job.key == key))
    cat.ingest(key, png((30, 200, 30), (128, 128)), {**stored, "engine": {}, "timings": {}}, "w9")
    page.reload()
    assert "done" in page.locator("#progress .jobs").inner_text()
    assert page.locator("#lineage a", has_text="128×128").count() == 1
    screenshot(page, "asset.png", tmp_path)


def test_sign_in_and_pause_a_schedule(page, studio, tmp_path):
    base, cat, _, _ = studio
    add_schedule(cat, "sunday-keyart")
    page.goto(base + "/")
    page.click("nav >> text=Schedules")
    assert page.url.endswith("/schedules")
    assert page.locator("#schedule-sunday-keyart .state").inner_text().strip() == "active"
    assert page.locator("#schedule-sunday-keyart button").count() == 0  # read-only until signed in
    page.click("main >> text=Sign in")
    page.fill("input[name=name]", "alice")
    page.fill("input[name=password]", "correct horse battery")
    page.click("button:has-text('Sign in')")
    assert page.url.endswith("/schedules")
    page.click("#schedule-sunday-keyart button:has-text('Pause')")
    assert page.url.endswith("/schedules#schedule-sunday-keyart")
    state = page.locator("#schedule-sunday-keyart .state").inner_text()
    assert "paused" in state and "pause pending" in state
    assert page.locator("#schedule-sunday-keyart button:has-text('Resume')").count() == 1
    stored = cat.schedule("sunday-keyart")
    assert (stored.active, stored.sync_pending) == (False, True)  # for the dispatcher in flows to pass on
    screenshot(page, "schedules.png", tmp_path)
