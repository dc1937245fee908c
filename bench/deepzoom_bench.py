"""Deep-zoom benchmark (issue 31): what it costs to build a 16K render's pyramid, and what the viewer fetches.

1. Paints a 16384x8192 image (gradients, a checkerboard and Gaussian noise, so the PNG weighs what a
   real render does: noise does not compress) and ingests it through the catalogue (SQLite + folder).
2. Builds its pyramid (catalogue.tiles.build, as the pyramid worker does) in a child process, timed,
   its peak resident memory read from the kernel (the child's VmHWM).
3. Serves the gallery (uvicorn in a child process, loopback) and opens the render page in Chromium:
   time to first paint (the viewer's `data-painted`: ms from navigation start until every tile of the
   first screen is drawn) and the bytes of tiles fetched for that first screen; then zooms to 1:1 on
   the top-left corner and counts the bytes that costs; both against the PNG's size.

Writes its report between the `<!-- bench:deepzoom -->` markers of docs/benchmarks.md (`bench:deepzoom-split`
with --server-cpu and --browser-cpu).

    taskset -c 1 .venv/bin/python bench/deepzoom_bench.py [--width 16384 --height 8192] [--no-write]
    .venv/bin/python bench/deepzoom_bench.py --server-cpu 0 --browser-cpu 1   # browser off the server's core
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdocs import update_section  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 900}
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-quic"]


def paint_png(width: int, height: int) -> bytes:
    """A painted render-sized PNG made by libvips (lazily, so painting a 16K image needs little memory)."""
    import pyvips

    xyz = pyvips.Image.xyz(width, height)
    x, y = xyz[0], xyz[1]
    red, green = x * (255.0 / width), y * (255.0 / height)
    blue = (((x / 64).floor() + (y / 64).floor()) % 2) * 160 + 40
    noise = pyvips.Image.gaussnoise(width, height, sigma=12, mean=0)
    image = red.bandjoin([green, blue]) + noise
    return image.cast("uchar").pngsave_buffer(compression=6)


def ingest(root: Path, width: int, height: int) -> tuple[str, str, str, int]:
    """(database URL, store URL, render id, PNG bytes) of one painted render ingested through the catalogue."""
    from catalogue import Catalogue  # first: tests/catalogue (no package) must not shadow it

    sys.path += [str(ROOT / "tests" / "web"), str(ROOT / "tests")]
    from web_support import record

    db, store = f"sqlite:///{root / 'catalogue.db'}", (root / "store").as_uri()
    cat = Catalogue.open(db, store)
    cat.migrate()
    rec = record("matte", 1, width=width, height=height)
    submission = cat.create_submission(rec["team"], rec["project"], rec["manifest_path"], "0" * 64, 1)
    cat.plan_jobs(submission, [rec])
    assert cat.claim(rec["key"], "bench", 3600)
    render_id = cat.ingest(rec["key"], paint_png(width, height), {**rec, "engine": {"name": "painted"}}, "bench")
    size = cat.render(render_id)["size_bytes"]
    cat.close()
    return db, store, render_id, size


BUILD = """
import json, sys, time
from catalogue import Catalogue, tiles
cat = Catalogue.open(sys.argv[1], sys.argv[2])
row = cat.render(sys.argv[3])
started = time.perf_counter()
if sys.argv[4] == "cube":  # the 360° viewer's cube faces, as if the render were equirectangular
    count = tiles.build_cube(cat.store, row["object_key"])
else:
    count = tiles.build(cat.store, row["object_key"])
seconds = time.perf_counter() - started
# VmHWM, not ru_maxrss: getrusage keeps the parent's peak across fork and exec (the ingest's, here).
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"tiles": count, "seconds": seconds, "peak_rss_mb": peak_kb / 1024}))
"""

SERVE = """
import sys, uvicorn
from pathlib import Path
from catalogue import Catalogue
from catalogue.web import create_app
from linstudio.settings import Settings
cat = Catalogue.open(sys.argv[1], sys.argv[2])
app = create_app(cat, Settings(home=Path(sys.argv[4]), secret_key="deepzoom-bench-secret-0123"))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
"""


def build_pyramid(db: str, store: str, render_id: str, what: str = "pyramid") -> dict:
    out = subprocess.run([sys.executable, "-c", BUILD, db, store, render_id, what], check=True, capture_output=True,
                         text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure_viewer(db: str, store: str, render_id: str, home: Path, runs: int,
                   server_cpu: int | None = None, browser_cpu: int | None = None) -> dict:
    """First paint (median of `runs` fresh browsers) and the bytes of the first screen and of a 1:1 corner.

    `server_cpu` / `browser_cpu`: pin the gallery server and Chromium to one core each, as on an
    artist's workstation that opens the studio's gallery (the browser never shares the server's core).
    """
    import httpx
    from playwright.sync_api import sync_playwright

    port = free_port()
    pin = ["taskset", "-c", str(server_cpu)] if server_cpu is not None else []
    server = subprocess.Popen([*pin, sys.executable, "-c", SERVE, db, store, str(port), str(home)], cwd=ROOT)
    if browser_cpu is not None:
        os.sched_setaffinity(0, {browser_cpu})  # Playwright's driver and Chromium inherit it
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/login", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "gallery did not start"
                time.sleep(0.2)
        paints, first_bytes, corner_bytes, first_tiles, corner_tiles = [], 0, 0, 0, 0
        with sync_playwright() as playwright:
            for run in range(runs):
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
                page = browser.new_page(viewport=VIEWPORT)
                fetched: list[tuple[str, int]] = []
                page.on("requestfinished", lambda r: fetched.append((r.url, r.sizes()["responseBodySize"])))
                page.goto(f"{base}/renders/{render_id}")
                wait(page, "document.getElementById('viewer').dataset.painted")
                paints.append(int(page.get_attribute("#viewer", "data-painted")))
                if os.environ.get("DEEPZOOM_BENCH_TRACE"):
                    print(page.evaluate("performance.getEntriesByType('resource').map(e => "
                                        "[e.name.split('/').slice(-3).join('/'), Math.round(e.startTime), "
                                        "Math.round(e.responseEnd)])"), page.evaluate(
                        "JSON.stringify(performance.getEntriesByType('navigation')[0])"))
                if run == 0:
                    page.wait_for_timeout(500)
                    first = [(u, n) for u, n in fetched if "/deepzoom" in u]
                    first_tiles, first_bytes = len(first), sum(n for _, n in first)
                    fetched.clear()
                    page.evaluate("""() => {
                        const viewer = window.linstudioViewers.viewer, item = viewer.world.getItemAt(0);
                        const size = viewer.viewport.getContainerSize();
                        viewer.viewport.fitBounds(item.imageToViewportRectangle(0, 0, size.x, size.y), true);
                    }""")
                    page.wait_for_timeout(300)
                    wait(page, "window.linstudioViewers.viewer.world.getItemAt(0).getFullyLoaded()")
                    page.wait_for_timeout(300)
                    corner = [(u, n) for u, n in fetched if "/deepzoom" in u]
                    corner_tiles, corner_bytes = len(corner), sum(n for _, n in corner)
                browser.close()
    finally:
        server.terminate()
        server.wait(10)
    paints.sort()
    return {"first_paint_ms": paints[len(paints) // 2], "first_paint_all_ms": paints, "first_tiles": first_tiles,
            "first_bytes": first_bytes, "corner_tiles": corner_tiles, "corner_bytes": corner_bytes}


def wait(page, expression: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true within {timeout} s: {expression}"
        page.wait_for_timeout(20)


def report(args, png_bytes: int, ingest_s: float, build: dict, cube: dict, viewer: dict) -> str:
    mb = 1024 * 1024
    allowed = args.allowed_cores
    pinned = f"taskset -c {','.join(map(str, allowed))} " if len(allowed) < (os.cpu_count() or 1) else ""
    command = f"{pinned}.venv/bin/python bench/deepzoom_bench.py" + (
        f" --width {args.width} --height {args.height}" if (args.width, args.height) != (16384, 8192) else "") + (
        f" --server-cpu {args.server_cpu}" if args.server_cpu is not None else "") + (
        f" --browser-cpu {args.browser_cpu}" if args.browser_cpu is not None else "")
    placement = (f"the gallery server on core {args.server_cpu}, Chromium on core {args.browser_cpu}"
                 if args.server_cpu is not None and args.browser_cpu is not None
                 else "the gallery server, Chromium and the builder share them")
    cpu = platform.processor() or platform.machine()
    cores = len(allowed)
    pct = lambda n: f"{100 * n / png_bytes:.3f}%"  # noqa: E731
    return "\n".join([
        f"### Deep zoom ({args.width}x{args.height})", "",
        f"`{command}` — {datetime.now(UTC):%Y-%m-%d}, {cpu}, {cores} core(s) allowed ({placement}), libvips {build['vips']}, Chromium headless on loopback, viewport "
        f"{VIEWPORT['width']}x{VIEWPORT['height']}.", "",
        "| what | measured |", "| --- | --- |",
        f"| painted PNG (noise: compresses like a render) | {png_bytes / mb:.1f} MiB |",
        f"| ingest through the catalogue (embed, thumbnail, hash, store) | {ingest_s:.1f} s |",
        f"| pyramid build (`catalogue.tiles.build`: decode, dzsave, upload to a folder store) | {build['seconds']:.1f} s, "
        f"{build['tiles']} tiles |",
        f"| peak memory of the building process (VmHWM: Python, the catalogue and libvips) | {build['peak_rss_mb']:.0f} MiB |",
        f"| cube faces for the 360° viewer, were it equirectangular (`catalogue.tiles.build_cube`: "
        f"reproject, cut, upload) | {cube['seconds']:.1f} s, {cube['tiles']} tiles, peak {cube['peak_rss_mb']:.0f} MiB |",
        f"| viewer first paint (navigation start to every tile of the first screen drawn; median of "
        f"{len(viewer['first_paint_all_ms'])}: {viewer['first_paint_all_ms']}) | {viewer['first_paint_ms']} ms |",
        f"| bytes for the first screen (whole image at screen size) | {viewer['first_bytes'] / 1024:.0f} KiB in "
        f"{viewer['first_tiles']} requests = {pct(viewer['first_bytes'])} of the PNG |",
        f"| then 1:1 on the top-left corner | {viewer['corner_bytes'] / 1024:.0f} KiB in {viewer['corner_tiles']} "
        f"requests = {pct(viewer['corner_bytes'])} of the PNG |",
        f"| downloading the PNG instead | {png_bytes / mb:.1f} MiB = 100% |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=16384)
    parser.add_argument("--height", type=int, default=8192)
    parser.add_argument("--runs", type=int, default=3, help="fresh browsers timed for the first paint")
    parser.add_argument("--no-write", action="store_true", help="print the report only")
    parser.add_argument("--server-cpu", type=int, help="pin the gallery server to this core")
    parser.add_argument("--browser-cpu", type=int, help="pin Chromium (and this process) to this core")
    args = parser.parse_args()
    args.allowed_cores = sorted(os.sched_getaffinity(0))  # before --browser-cpu narrows this process
    import pyvips

    with tempfile.TemporaryDirectory(prefix="deepzoom-bench-") as folder:
        root = Path(folder)
        started = time.perf_counter()
        db, store, render_id, png_bytes = ingest(root, args.width, args.height)
        ingest_s = time.perf_counter() - started  # painting included: said below
        print(f"ingested {render_id}: {png_bytes} bytes in {ingest_s:.1f} s (painting included)", flush=True)
        build = build_pyramid(db, store, render_id) | {"vips": ".".join(str(pyvips.version(i)) for i in range(3))}
        print(f"pyramid: {build}", flush=True)
        cube = build_pyramid(db, store, render_id, "cube")
        print(f"cube faces: {cube}", flush=True)
        viewer = measure_viewer(db, store, render_id, root / "home", args.runs, args.server_cpu, args.browser_cpu)
        print(f"viewer: {viewer}", flush=True)
    text = report(args, png_bytes, ingest_s, build, cube, viewer).replace(
        "| ingest through the catalogue", "| painting it and ingesting it through the catalogue")
    print(text)
    if not args.no_write:
        if args.server_cpu is not None and args.browser_cpu is not None:
            update_section("deepzoom-split", text, heading="## Deep zoom, the browser off the server's core")
        else:
            update_section("deepzoom", text, heading="## Deep zoom")


if __name__ == "__main__":
    main()
