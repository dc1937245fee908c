"""Refresh docs/screenshots/gallery.png and asset.png from real renders of the trained `shapes-sd15`.

    .venv/bin/python bench/screenshots.py [--out docs/screenshots]

Renders `manifests/examples/shapes.yaml` (the shapes example manifest that `make demo` runs) into a fresh LINSTUDIO_HOME (the embedded default), re-renders its key art at
2x so the asset page has a lineage, serves the gallery with `linstudio serve`, and photographs the
front page and the re-render's page in Debian's Chromium (Playwright, never `playwright install`). A visitor then sees what a newcomer's `make demo` shows:
shapes that match their prompts, not flat squares made up for a test.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def linstudio(*args: str, env: dict) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "linstudio"), *args]
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True)


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
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {args.out / 'gallery.png'} and {args.out / 'asset.png'}")


if __name__ == "__main__":
    main()
