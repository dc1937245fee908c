"""Refresh docs/screenshots/gallery.png, asset.png and schedules.png from real renders of the trained `shapes-sd15`.

    .venv/bin/python bench/screenshots.py [--out docs/screenshots]

Renders `manifests/examples/shapes.yaml` (the shapes example manifest that `make demo` runs) into a fresh LINSTUDIO_HOME (the embedded default), re-renders its key art at
2x so the asset page has a lineage, serves the gallery with `linstudio serve`, and photographs the
front page and the re-render's page in Debian's Chromium (Playwright, never `playwright install`). A visitor then sees what a newcomer's `make demo` shows:
shapes that match their prompts, not flat squares made up for a test.

For the Schedules page it records three schedules over those renders and signs in as a user added
with `linstudio users add`, pauses one and photographs the page with its "pause pending". The
schedules are written to the catalogue directly, not with `linstudio schedules add`, which would
register them with a Prefect server too: the picture needs only the catalogue's record.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
USER, PASSWORD = "alice", "screenshots-only-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def linstudio(*args: str, env: dict) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "linstudio"), *args]
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True)


def next_weekly(now: datetime, weekday: int, hour: int, minute: int, zone: str) -> datetime:
    """The next `weekday` (Monday 0) at hour:minute in time zone `zone` after `now`, in UTC: what Prefect
    would report as a weekly cron schedule's next run (the catalogue's `next_run_at`)."""
    local = now.astimezone(ZoneInfo(zone))
    candidate = local.replace(hour=hour, minute=minute, second=0, microsecond=0) + timedelta(
        days=(weekday - local.weekday()) % 7)
    if candidate <= local:
        candidate += timedelta(days=7)
    return candidate.astimezone(UTC)


def record_schedules(home: Path) -> None:
    """Three schedules over the shapes renders, as `linstudio schedules add` records them (the key art's
    with the outcome of a run: the 2x re-render above), in the catalogue of LINSTUDIO_HOME `home`."""
    from catalogue import Catalogue
    from catalogue.schedules import LastRun, ScheduleRecord, Selection
    from linstudio_settings import Settings

    catalogue = Catalogue.from_settings(Settings(home=home, database_url=None, store_url=None))
    try:
        now = catalogue.clock()
        catalogue.add_schedule(ScheduleRecord(
            "sunday-keyart", Selection(project="shapes-world", tag="key-art"), ("256x256", "512x512"), "Europe/Paris",
            cron="0 2 * * 0", created_by="td", next_run_at=next_weekly(now, 6, 2, 0, "Europe/Paris")))
        catalogue.record_schedule_run("sunday-keyart", LastRun(now - timedelta(days=2), "completed", made=1,
                                                               skipped=0, failed=0))
        catalogue.add_schedule(ScheduleRecord(
            "approved-textures", Selection(team="game", tag="texture", status="approved"), ("1024x512",), "UTC",
            cron="30 1 * * 5", created_by="td", next_run_at=next_weekly(now, 4, 1, 30, "UTC")))
        catalogue.add_schedule(ScheduleRecord(
            "launch-night", Selection(project="shapes-world", status="approved"), ("2048x2048",),
            "America/Los_Angeles", run_at=now + timedelta(days=10), created_by="td", next_run_at=now + timedelta(days=10)))
    finally:
        catalogue.close()


def photograph_schedules(browser, base: str, out: Path) -> None:
    """Sign in, pause the Friday schedule, and photograph the Schedules page saying so."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(f"{base}/login?next=/schedules")
    page.fill("input[name=name]", USER)
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Sign in')")
    page.click("#schedule-approved-textures button:has-text('Pause')")
    page.screenshot(path=str(out / "schedules.png"), full_page=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "LINSTUDIO_HOME": home, "PREFECT_HOME": str(Path(home) / "prefect"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
        for variable in ("LINSTUDIO_DATABASE_URL", "LINSTUDIO_STORE_URL", "PREFECT_API_URL"):
            env.pop(variable, None)
        linstudio("run", str(REPO / "manifests" / "examples" / "shapes.yaml"), env=env)
        linstudio("rerender", "--tag", "key-art", "--size", "256x256", env=env)
        listing = linstudio("catalogue", "ls", "--json", env=env).stdout
        import json

        child = next(r for r in json.loads(listing) if r.get("parent_render_id"))
        record_schedules(Path(home))
        linstudio("users", "add", USER, "--password", PASSWORD, env=env)
        port = free_port()
        server = subprocess.Popen([str(Path(sys.executable).parent / "linstudio"), "serve", "--port", str(port)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(base + "/", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            args.out.mkdir(parents=True, exist_ok=True)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
                page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
                page.goto(base + "/")
                page.screenshot(path=str(args.out / "gallery.png"), full_page=True)
                page.goto(f"{base}/renders/{child['render_id']}")
                page.screenshot(path=str(args.out / "asset.png"), full_page=True)
                photograph_schedules(browser, base, args.out)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {args.out / 'gallery.png'}, {args.out / 'asset.png'} and {args.out / 'schedules.png'}")


if __name__ == "__main__":
    main()
