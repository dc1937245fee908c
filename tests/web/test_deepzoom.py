"""Deep zoom, 360° panoramas and compare (issue 31): the pyramid in the store, its routes, the
catalogue's consistency rules for it, and the viewers in a real browser (Chromium, JavaScript on).

One catalogue, one server and one browser serve the module; renders are painted images ingested
through the catalogue (tests/web/deepzoom_support.py), the largest 4096x2048, so the module stays
cheap. Screenshots go to LINSTUDIO_SCREENSHOT_DIR when set (docs/screenshots/ holds the committed
ones), else to a temporary folder.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from deepzoom_support import ingest_painted, painted
from PIL import Image
from web_support import StepClock, served_over_http

from catalogue import Catalogue, panoramas, pyramids, tiles

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
# Pannellum needs WebGL, which SwiftShader gives a headless Chromium on the CPU; it makes OpenSeadragon's
# canvas ~6x slower, so only the panorama's test runs with it.
FLAT, WEBGL = ["--disable-gpu"], ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
VIEWPORT = {"width": 1280, "height": 900}
BIG = (4096, 2048)
BIG_PANORAMA = (4112, 2056)  # just above 4096 px wide: cube-face tiles, the smallest such cube (3 levels)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """(base URL, catalogue, ids): a 4096x2048 render with its pyramid, a smaller sibling, a panorama."""
    from catalogue.web import create_app
    from linstudio.settings import Settings

    root = tmp_path_factory.mktemp("deepzoom")
    cat = Catalogue.open(f"sqlite:///{root / 'catalogue.db'}", (root / "store").as_uri(),
                         clock=StepClock(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)))
    cat.migrate()
    ids = {"big": ingest_painted(cat, "matte", 1, *BIG),
           "small": ingest_painted(cat, "matte", 2, 1024, 512),
           "pano": ingest_painted(cat, "sky", 3, 2048, 1024, projection="equirectangular"),
           "vr": ingest_painted(cat, "vr", 7, *BIG_PANORAMA, projection="equirectangular")}
    assert tiles.state(cat.store, cat.render(ids["big"])["object_key"], *BIG) == "missing"  # ingest wrote none
    worker = pyramids.PyramidWorker(cat)  # what `linstudio serve` runs in a thread, one pass
    assert worker.run_once() == [ids["big"], ids["vr"]]
    assert worker.run_once() == []  # nothing newer since
    app = create_app(cat, Settings(home=root / "home", secret_key="deepzoom-test-secret-0123"))
    with served_over_http(app) as (host, port):
        yield f"http://{host}:{port}", cat, ids
    cat.close()


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: bash infra/ensure-test-deps.sh")
    with sync_playwright() as driver:
        yield driver


@contextlib.contextmanager
def tab_in(playwright, extra_args: list[str], viewport: dict = VIEWPORT):
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS + extra_args)
    context = chromium.new_context(viewport=viewport)
    context.set_default_timeout(90_000)  # a loaded shared machine: SwiftShader pages take a while to load
    tab = context.new_page()
    errors = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    chromium.close()
    assert errors == [], f"script errors: {errors}"


@pytest.fixture
def page(playwright):
    with tab_in(playwright, FLAT) as tab:
        yield tab


@pytest.fixture
def gl_page(playwright):
    with tab_in(playwright, WEBGL, {"width": 800, "height": 600}) as tab:  # software WebGL: cost grows with pixels
        yield tab


def shot(page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("LINSTUDIO_SCREENSHOT_DIR") or tmp_path)
    page.screenshot(path=str(folder / name))


def wait_until(page, expression: str, timeout: float = 60.0) -> None:
    """Poll `expression` (page.wait_for_function evaluates strings with eval, which our CSP forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true within {timeout} s: {expression}"
        page.wait_for_timeout(50)


def wait_painted(page, element_id: str) -> None:
    wait_until(page, f"document.getElementById('{element_id}').dataset.painted !== undefined")


# -- the pyramid and its routes -------------------------------------------------------------------------------


def test_pyramid_routes_follow_the_render(studio):
    base, _cat, ids = studio
    with httpx.Client(base_url=base, timeout=60) as http:  # a loaded machine: more than httpx's 5 s
        dzi = http.get(f"/renders/{ids['big']}/deepzoom.dzi")
        assert dzi.status_code == 200 and dzi.headers["content-type"].startswith("application/xml")
        assert f'TileSize="{tiles.TILE_SIZE}"' in dzi.text and 'Width="4096"' in dzi.text and 'Height="2048"' in dzi.text
        assert http.get(f"/renders/{ids['big']}/deepzoom_files/0/0_0.jpg").status_code == 200
        assert http.get(f"/renders/{ids['big']}/deepzoom_files/12/99_99.jpg").status_code == 404
        assert http.get(f"/renders/{ids['big']}/deepzoom_files/12/..%2f..%2fx.jpg").status_code == 404
        assert http.get(f"/renders/{ids['small']}/deepzoom.dzi").status_code == 404  # shown from the PNG
        assert http.get(f"/renders/{ids['small']}/image").headers["content-type"] == "image/png"
        assert http.get("/renders/01NOPE/deepzoom.dzi").status_code == 404
        detail = http.get(f"/api/renders/{ids['pano']}").json()["render"]
        assert detail["projection"] == "equirectangular"
        assert http.get(f"/api/renders/{ids['big']}").json()["render"]["projection"] is None
        assert "equirectangular" in http.get(f"/renders/{ids['pano']}").text
        layout = panoramas.CubeLayout.of(BIG_PANORAMA[0])
        assert (layout.cube, layout.levels) == (1308, 3)  # 4112 / pi, a multiple of 4: levels of 327, 654, 1308
        corner = http.get(f"/renders/{ids['vr']}/cube/3/u2_2.jpg")
        assert corner.status_code == 200 and Image.open(io.BytesIO(corner.content)).size == (1308 - 1024,) * 2
        assert http.get(f"/renders/{ids['vr']}/cube/3/u3_0.jpg").status_code == 404  # past the face
        assert http.get(f"/renders/{ids['vr']}/cube/3/x0_0.jpg").status_code == 404  # no such face
        assert http.get(f"/renders/{ids['pano']}/cube/1/f0_0.jpg").status_code == 404  # 2048 wide: from the PNG


def test_a_tile_holds_the_pngs_pixels(studio):
    """Tile (1, 1) of the full-resolution level is the PNG's crop with a pixel of overlap each side."""
    base, _cat, ids = studio
    level = 12  # ceil(log2(4096))
    answer = httpx.get(f"{base}/renders/{ids['big']}/deepzoom_files/{level}/1_1.jpg", timeout=60)
    tile = Image.open(io.BytesIO(answer.content))
    left = top = tiles.TILE_SIZE - tiles.OVERLAP
    side = tiles.TILE_SIZE + 2 * tiles.OVERLAP
    assert tile.size == (side, side)
    crop = painted(*BIG).crop((left, top, left + side, top + side))
    diff = np.abs(np.asarray(tile.convert("RGB"), dtype=np.int16) - np.asarray(crop, dtype=np.int16))
    assert diff.mean() < 3.0, diff.mean()  # JPEG at quality 85 on hard checker edges


# -- the catalogue knows the tiles ----------------------------------------------------------------------------


def test_an_interrupted_pyramid_is_found_by_check_and_rebuilt_by_repair(studio, monkeypatch):
    _base, cat, _ids = studio
    render_id = ingest_painted(cat, "cut", 4, 2304, 1152)
    key = cat.render(render_id)["object_key"]
    real_put, puts = cat.store.put, []

    def failing_put(k, data, content_type):
        puts.append(k)
        if len(puts) > 30:
            raise OSError("store went away halfway")
        real_put(k, data, content_type)

    monkeypatch.setattr(cat.store, "put", failing_put)
    with pytest.raises(OSError):
        tiles.build(cat.store, key)
    monkeypatch.undo()
    assert tiles.state(cat.store, key, 2304, 1152) == "partial"
    report = cat.check(verify_hashes=False)
    assert [(p.render_id, p.state) for p in report.pyramid_problems] == [(render_id, "partial")]
    assert not report.ok and "partial deepzoom/" in str(report)
    repaired = cat.repair(verify_hashes=False)
    assert [a.kind for a in repaired.actions] == ["build-pyramid"] and repaired.ok, str(repaired)
    assert tiles.state(cat.store, key, 2304, 1152) == "complete"
    cat.forget_renders([cat.render(render_id)["job_key"]])


def test_a_pyramid_built_with_the_old_tile_size_still_reads_complete(studio):
    """Pyramids built before tiles grew to 510 px name 254 in their descriptor: state counts by it."""
    _base, cat, ids = studio
    key = cat.render(ids["big"])["object_key"]
    descriptor = tiles.read_descriptor(cat.store, key)
    assert descriptor == tiles.Descriptor("jpg", tiles.TILE_SIZE, 1, *BIG)
    stem = "deepzoom/old/render"
    old = "renders/old/render.png"
    cat.store.put(f"{stem}.dzi", tiles.Descriptor("jpg", 254, 1, *BIG).xml().encode(), "application/xml")
    for n in range(tiles.expected_tiles(*BIG, tile_size=254)):
        cat.store.put(f"{stem}_files/x/{n}.jpg", b"t", "image/jpeg")
    try:
        assert tiles.state(cat.store, old, *BIG) == "complete"
        cat.store.delete(f"{stem}_files/x/0.jpg")
        assert tiles.state(cat.store, old, *BIG) == "partial"
        cat.store.put(f"{stem}.dzi", b"<Image truncated", "application/xml")  # unreadable: a repair rebuilds it
        assert tiles.read_descriptor(cat.store, old) is None and tiles.state(cat.store, old, *BIG) == "partial"
    finally:
        tiles.delete(cat.store, old)
    assert tiles.state(cat.store, key, *BIG) == "complete"


def test_a_panorama_missing_its_cube_faces_is_partial(studio):
    _base, cat, ids = studio
    key = cat.render(ids["vr"])["object_key"]
    cube = tiles.PyramidKeys.of(key).cube_prefix
    assert tiles.state(cat.store, key, *BIG_PANORAMA, "equirectangular") == "complete"
    first = next(iter(cat.store.list(cube)))
    data = b"".join(cat.store.stream(first))
    cat.store.delete(first)
    try:
        assert tiles.state(cat.store, key, *BIG_PANORAMA, "equirectangular") == "partial"
        assert tiles.state(cat.store, key, *BIG_PANORAMA) == "complete"  # a flat render needs no cube
        assert [(p.render_id, p.state) for p in cat.check(verify_hashes=False).pyramid_problems] == \
            [(ids["vr"], "partial")]
    finally:
        cat.store.put(first, data, "image/jpeg")


def test_a_panorama_from_before_cube_faces_gets_only_its_cube(studio, monkeypatch):
    """A pyramid built before cube faces existed: the next pass builds the cube alone and leaves the
    flat tiles (which browsers may have cached, at their older tile size) as they are."""
    _base, cat, ids = studio
    key = cat.render(ids["vr"])["object_key"]
    cube = tiles.PyramidKeys.of(key).cube_prefix
    for stale in list(cat.store.list(cube)):
        cat.store.delete(stale)
    assert tiles.state(cat.store, key, *BIG_PANORAMA, "equirectangular") == "partial"
    assert tiles.inspect(cat.store, key, *BIG_PANORAMA, "equirectangular").only_cube_missing

    def no_full_build(*args, **kwargs):
        raise AssertionError("the flat pyramid was rebuilt")

    monkeypatch.setattr(tiles, "build", no_full_build)
    assert pyramids.build_pending(cat, [ids["vr"]]) == [ids["vr"]]
    assert tiles.state(cat.store, key, *BIG_PANORAMA, "equirectangular") == "complete"


def test_a_project_named_like_a_tile_folder_is_no_orphan(studio):
    """Stems come from a key's whole shape: `ice_cube` or `x_files` in a path cut no stem short (a
    repair once would have deleted every pyramid of such a project as an orphan)."""
    _base, cat, _ids = studio
    render_id = ingest_painted(cat, "a1", 8, 2304, 1152, project="ice_cube")
    key = cat.render(render_id)["object_key"]
    assert pyramids.build_pending(cat, [render_id]) == [render_id]
    stem = tiles.PyramidKeys.of(key).stem
    assert "ice_cube" in stem and set(tiles.pyramid_stems(cat.store)) >= {stem}
    assert not any(s.endswith("/ice") for s in tiles.pyramid_stems(cat.store))
    assert tiles.stem_of(f"{stem}_cube/2/u0_1.jpg") == stem and tiles.stem_of(f"{stem}_files/3/0_0.jpg") == stem
    assert tiles.stem_of(f"{stem}_files/notes.txt") is None
    assert cat.check(verify_hashes=False).pyramid_problems == []
    assert tiles.state(cat.store, key, 2304, 1152) == "complete"
    cat.forget_renders([cat.render(render_id)["job_key"]])
    assert list(cat.store.list(stem)) == []


def test_a_deleted_render_leaves_no_tiles_and_an_orphan_pyramid_is_repaired(studio):
    _base, cat, _ids = studio
    render_id = ingest_painted(cat, "gone", 5, 2304, 1152)
    key = cat.render(render_id)["object_key"]
    assert pyramids.build_pending(cat, [render_id]) == [render_id]
    stem = tiles.PyramidKeys.of(key).stem
    assert list(cat.store.list(stem))
    cat.forget_renders([cat.render(render_id)["job_key"]])  # what the gallery's delete does
    assert list(cat.store.list(stem)) == []
    # A crash between the row's deletion and the tiles' leaves an orphan pyramid: check and repair see to it.
    cat.store.put(f"{stem}_files/0/0_0.jpg", b"left behind", "image/jpeg")
    report = cat.check(verify_hashes=False)
    assert [(p.stem, p.state) for p in report.pyramid_problems] == [(stem, "orphan")]
    assert cat.repair(verify_hashes=False).ok
    assert list(cat.store.list(stem)) == []


# -- the viewers in a browser ---------------------------------------------------------------------------------


@pytest.mark.browser
def test_a_big_render_opens_in_deep_zoom_and_a_corner_at_one_to_one_fetches_only_its_tiles(page, studio, tmp_path):
    base, _cat, ids = studio
    fetched = []
    page.on("request", lambda request: fetched.append(request.url))
    page.goto(f"{base}/renders/{ids['big']}")
    wait_painted(page, "viewer")
    first_screen = [u for u in fetched if "/deepzoom_files/" in u]
    assert first_screen and not any(u.endswith(("/download", "/image")) for u in fetched)
    assert not any(u.endswith(".dzi") for u in fetched)  # the page carries the descriptor
    # Tiles are cached as immutable: their URLs name the tile size, so a rebuild at another size
    # is never mixed with tiles a browser cached before it.
    assert all(u.endswith(f"?tile={tiles.TILE_SIZE}") for u in first_screen), first_screen
    shot(page, "deepzoom.png", tmp_path)
    fetched.clear()
    # Zoom to 1:1 on the top-left corner.
    page.evaluate("""() => {
        const viewer = window.linstudioViewers.viewer, item = viewer.world.getItemAt(0);
        const size = viewer.viewport.getContainerSize();
        viewer.viewport.fitBounds(item.imageToViewportRectangle(0, 0, size.x, size.y), true);
    }""")
    page.wait_for_timeout(300)
    wait_until(page, "window.linstudioViewers.viewer.world.getItemAt(0).getFullyLoaded()")
    size = page.evaluate("(() => { const s = window.linstudioViewers.viewer.viewport.getContainerSize(); "
                         "return [s.x, s.y]; })()")
    full = [tuple(map(int, m.groups())) for u in fetched
            if (m := re.search(r"/deepzoom_files/12/(\d+)_(\d+)\.jpg\?tile=\d+$", u))]
    assert full, fetched
    cols, rows = (s // tiles.TILE_SIZE + 1 for s in size)
    assert all(col <= cols and row <= rows for col, row in full), (full, size)
    level_tiles = math.ceil(BIG[0] / tiles.TILE_SIZE) * math.ceil(BIG[1] / tiles.TILE_SIZE)
    assert len(full) <= (cols + 1) * (rows + 1) < level_tiles, (full, level_tiles)
    shot(page, "deepzoom-corner.png", tmp_path)


@pytest.mark.browser
def test_an_equirectangular_render_opens_in_the_360_viewer(gl_page, studio, tmp_path):
    page = gl_page
    base, _cat, ids = studio
    page.goto(f"{base}/renders/{ids['pano']}", wait_until="domcontentloaded")
    wait_until(page, "['open', 'failed'].includes(document.getElementById('sphere').dataset.state)", 90)
    assert page.get_attribute("#sphere", "data-state") == "open", page.get_attribute("#sphere", "data-error")
    assert page.text_content("#projection") == "equirectangular"
    assert page.get_attribute("#viewer", "data-viewer") == "flat"  # and the flat view beside it
    page.locator("#sphere").scroll_into_view_if_needed()
    shot(page, "panorama.png", tmp_path)


def _view(page, element_id: str, yaw: float, pitch: float) -> np.ndarray:
    """The 360° viewer `element_id` turned to (yaw, pitch), once its pixels stop changing (cube tiles
    arrive one by one), as an RGB array."""
    page.evaluate(f"window.linstudioViewers['{element_id}'].setYaw({yaw}, false).setPitch({pitch}, false)")
    previous = None
    for _ in range(60):
        page.wait_for_timeout(250)
        current = np.asarray(Image.open(io.BytesIO(page.locator(f"#{element_id}").screenshot())).convert("RGB"),
                             dtype=np.int16)
        if previous is not None and np.array_equal(previous, current):
            return current
        previous = current
    return previous


@pytest.mark.browser
def test_a_panorama_above_4096_px_opens_from_cube_tiles_that_show_what_the_png_shows(gl_page, studio, tmp_path):
    """The 360° viewer of a 4112x2056 panorama fetches cube-face tiles, not the PNG; every way it looks
    (the four sides, up and down) shows what Pannellum shows from the PNG itself (the faces' geometry)."""
    page = gl_page
    base, cat, ids = studio
    fetched = []
    page.on("request", lambda request: fetched.append(request.url))
    page.goto(f"{base}/renders/{ids['vr']}", wait_until="domcontentloaded")
    wait_until(page, "['open', 'failed'].includes(document.getElementById('sphere').dataset.state)", 90)
    assert page.get_attribute("#sphere", "data-state") == "open", page.get_attribute("#sphere", "data-error")
    assert any("/cube/" in u for u in fetched) and not any(u.endswith("/image") for u in fetched), fetched
    key = cat.render(ids["vr"])["object_key"]
    assert tiles.state(cat.store, key, *BIG_PANORAMA, "equirectangular") == "complete"
    # Two viewers of one size side by side: the page's cube settings, and the PNG as one texture.
    page.evaluate(f"""() => {{
        const cube = JSON.parse(document.getElementById('sphere').dataset.source).cube;
        const settings = {{cube: {{type: 'multires', multiRes: cube}},
                          reference: {{type: 'equirectangular', panorama: '/renders/{ids['vr']}/image'}}}};
        for (const [id, config] of Object.entries(settings)) {{
            const box = document.createElement('div');
            box.id = id; box.style.width = '400px'; box.style.height = '300px';
            document.body.prepend(box);
            window.linstudioViewers[id] = pannellum.viewer(box, Object.assign(config,
                {{autoLoad: true, showControls: false, hfov: 90}}));
        }}
    }}""")
    wait_until(page, "window.linstudioViewers.cube.isLoaded() && window.linstudioViewers.reference.isLoaded()", 90)
    differences = {}
    for yaw, pitch in ((0, 0), (90, 0), (180, 0), (-90, 0), (0, 75), (30, -75)):
        cube, reference = _view(page, "cube", yaw, pitch), _view(page, "reference", yaw, pitch)
        differences[(yaw, pitch)] = float(np.abs(cube - reference).mean())
    shot(page, "panorama-cube.png", tmp_path)
    assert max(differences.values()) < 12, differences  # JPEG tiles and a level's resampling, no turned face
    assert min(differences.values()) > 0  # the two were really drawn from different sources


@pytest.mark.browser
def test_compare_keeps_two_renders_in_step(page, studio, tmp_path):
    base, _cat, ids = studio
    page.goto(f"{base}/renders/{ids['big']}")
    page.click(f"a[href='/compare?left={ids['big']}&right={ids['small']}']")
    assert page.url.endswith(f"/compare?left={ids['big']}&right={ids['small']}")
    wait_painted(page, "left")
    wait_painted(page, "right")
    page.evaluate("""() => {
        const left = window.linstudioViewers.left.viewport;
        left.zoomTo(left.getZoom() * 6, null, true);
        left.panTo(new OpenSeadragon.Point(0.3, 0.2), true);
    }""")
    page.wait_for_timeout(500)
    state = page.evaluate("""() => ['left', 'right'].map(id => {
        const vp = window.linstudioViewers[id].viewport, c = vp.getCenter(true);
        return [vp.getZoom(true), c.x, c.y];
    })""")
    (zoom_l, x_l, y_l), (zoom_r, x_r, y_r) = state
    assert zoom_l == pytest.approx(zoom_r, rel=1e-3) and zoom_l > 2
    assert (x_l, y_l) == (pytest.approx(x_r, abs=1e-3), pytest.approx(y_r, abs=1e-3))
    shot(page, "compare.png", tmp_path)


def test_catalogue_tiles_builds_the_pyramids_of_renders_made_before(tmp_path, monkeypatch):
    """`linstudio catalogue tiles --missing` on a catalogue whose big render has no pyramid yet."""
    from typer.testing import CliRunner

    from linstudio.cli import app
    from linstudio.settings import get_settings

    cat = Catalogue.open(f"sqlite:///{tmp_path / 'catalogue.db'}", (tmp_path / "store").as_uri())
    cat.migrate()
    render_id = ingest_painted(cat, "old", 6, 2304, 1152)
    monkeypatch.setenv("LINSTUDIO_DATABASE_URL", f"sqlite:///{tmp_path / 'catalogue.db'}")
    monkeypatch.setenv("LINSTUDIO_STORE_URL", (tmp_path / "store").as_uri())
    get_settings.cache_clear()
    try:
        assert CliRunner().invoke(app, ["catalogue", "check", "--no-hashes"]).exit_code == 1  # missing pyramid
        result = CliRunner().invoke(app, ["catalogue", "tiles", "--missing"])
        assert result.exit_code == 0 and f"{render_id}  2304x1152" in result.output, result.output
        again = CliRunner().invoke(app, ["catalogue", "tiles", "--missing"])
        assert again.exit_code == 0 and "0 pyramid(s) built; 1 of 1" in again.output, again.output
        assert CliRunner().invoke(app, ["catalogue", "check", "--no-hashes"]).exit_code == 0
    finally:
        get_settings.cache_clear()
        cat.close()
