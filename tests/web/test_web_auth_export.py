"""Passwords, tokens and signed cookies (catalogue.auth); delivery formats and naming (catalogue.export); the CLI."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner
from web_support import make_render, record

from catalogue import auth
from catalogue import export as exporting
from catalogue.models import ApiToken, User
from catalogue.pngmeta import read_texts


def test_passwords_are_salted_scrypt_hashes():
    first, second = auth.hash_password("correct horse"), auth.hash_password("correct horse")
    assert first != second and first.startswith("scrypt$16384$8$1$") and "correct" not in first
    assert auth.verify_password("correct horse", first)
    assert not auth.verify_password("correct hors", first)
    assert not auth.verify_password("x", "garbage") and not auth.verify_password("x", "md5$1$2$3$4$5")


def test_users_and_tokens_are_stored_hashed(web_cat):
    with web_cat.transaction() as session:
        auth.add_user(session, "alice", "long enough pw", web_cat.clock())
        token = auth.create_token(session, "bot", web_cat.clock())
    with web_cat.transaction() as session:
        stored = session.scalar(select(ApiToken))
        assert stored.token_sha256 == hashlib.sha256(token.encode()).hexdigest() and token not in str(stored.__dict__)
        assert "long enough" not in session.scalar(select(User)).password_hash
        assert auth.token_owner(session, token) == "bot" and auth.token_owner(session, token + "x") is None
        assert auth.authenticate(session, "alice", "long enough pw") == "alice"
        assert auth.authenticate(session, "alice", "wrong") is None and auth.authenticate(session, "nobody", "x") is None
        with pytest.raises(auth.AuthError, match="already exists"):
            auth.create_token(session, "bot", web_cat.clock())
        with pytest.raises(auth.AuthError, match="at least 8"):
            auth.add_user(session, "bob", "short", web_cat.clock())


def test_session_cookies_and_csrf_tokens_cannot_be_forged_or_reused_after_expiry():
    signer = auth.Signer(b"k" * 32)
    cookie = signer.session_cookie("alice", now=1000)
    assert signer.session_user(cookie, now=1001) == "alice"
    assert signer.session_user(cookie, now=1000 + auth.SESSION_SECONDS + 1) is None
    assert signer.session_user(cookie.replace("alice", "admin"), now=1001) is None
    assert auth.Signer(b"j" * 32).session_user(cookie, now=1001) is None
    assert signer.check_csrf("browser-1", signer.csrf_token("browser-1"))
    assert not signer.check_csrf("browser-2", signer.csrf_token("browser-1"))
    assert not signer.check_csrf(None, None)


@pytest.mark.parametrize("fmt", list(exporting.FORMATS))
def test_every_format_keeps_or_strips_the_generation_settings(web_cat, tmp_path, fmt):
    render_id = make_render(web_cat, record(prompt="a red fox"), color=(250, 10, 40))
    render = web_cat.render(render_id)
    for keep in (True, False):
        options = exporting.ExportOptions(destination=str(tmp_path / f"{fmt}-{keep}"), format=fmt, keep_metadata=keep)
        data = exporting.convert(web_cat.store.get(render["object_key"]), render, options)
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.size == (64, 64)
        if fmt == "png16":
            assert image.mode in ("I;16", "RGB", "I") or image.info  # Pillow reads 16-bit RGB as 8-bit RGB
            assert data[24] == 16  # IHDR bit depth
        carried = "a red fox" in data.decode("latin-1")
        assert carried is keep, (fmt, keep)
        if fmt in ("png8", "png16", "tiff"):  # lossless: the pixels are the render's
            assert image.convert("RGB").getpixel((3, 3)) == (250, 10, 40)


def test_png16_values_are_exact():
    image = Image.new("RGB", (3, 2), (0, 128, 255))
    data = exporting.png16(image, {"parameters": "x"})
    assert read_texts(data)["parameters"] == "x"
    import zlib

    idat = data[data.index(b"IDAT") + 4:]
    raw = zlib.decompressobj().decompress(idat)
    row = raw[1:1 + 3 * 3 * 2]  # (W*C*2) bytes after the filter byte
    assert [int.from_bytes(row[i:i + 2], "big") for i in range(0, 6, 2)] == [0, 128 * 257, 65535]


def test_names_are_safe_and_clashes_refused(web_cat, tmp_path):
    render = web_cat.render(make_render(web_cat, record(asset_id="../../etc/passwd")))
    assert exporting.export_name("{team}/{asset_id}", render, "png") == "film/etc_passwd.png"
    assert ".." not in exporting.export_name("../{asset_id}/../x", render, "png")
    with pytest.raises(exporting.ExportError, match="not one of"):
        exporting.ExportOptions(destination="x", template="{prompt.__class__}")
    with pytest.raises(exporting.ExportError, match="format"):
        exporting.ExportOptions(destination="x", format="gif")
    other = web_cat.render(make_render(web_cat, record(asset_id="../../etc/passwd", seed=2)))
    with pytest.raises(exporting.ExportError, match="same name"):
        exporting.export_renders(web_cat.store, [render, other],
                                 exporting.ExportOptions(destination=str(tmp_path / "out"), template="{asset_id}"))
    assert not (tmp_path / "out").exists()


def test_export_to_s3_prefix(both_cat, catalogue_urls, tmp_path):
    render = both_cat.render(make_render(both_cat, record()))
    destination = catalogue_urls.store_url.rstrip("/") + "/deliveries" if catalogue_urls.kind != "embedded" \
        else (tmp_path / "out").as_uri()
    written = exporting.export_renders(both_cat.store, [render], exporting.ExportOptions(destination=destination,
                                                                                         format="webp"))
    assert written == [exporting.open_destination(destination).uri("film/night-city/hero_1_64x64.webp")]
    assert exporting.open_destination(destination).get("film/night-city/hero_1_64x64.webp")[:4] == b"RIFF"


def test_cli_users_tokens_and_export(isolated_home, tmp_path):
    from catalogue import Catalogue
    from linstudio.cli import app
    from linstudio.settings import get_settings

    runner = CliRunner()
    added = runner.invoke(app, ["users", "add", "alice"], input="long enough pw\nlong enough pw\n")
    assert added.exit_code == 0, added.output
    made = runner.invoke(app, ["tokens", "create", "nightly"])
    assert made.exit_code == 0, made.output
    token = made.output.strip().splitlines()[-1]
    assert token.startswith(auth.TOKEN_PREFIX) and " " not in token
    settings = get_settings()
    with Catalogue.open(settings.resolved_database_url, settings.resolved_store_url) as cat:
        with cat.transaction() as session:
            assert auth.token_owner(session, token) == "nightly"
            assert auth.authenticate(session, "alice", "long enough pw") == "alice"
        render_id = make_render(cat, record())
    out = tmp_path / "delivery"
    exported = runner.invoke(app, ["export", str(out), "--render", render_id, "--format", "tiff",
                                   "--template", "{asset_id}-{seed}", "--strip-metadata"])
    assert exported.exit_code == 0, exported.output
    assert (out / "hero-1.tif").exists() and b"neon" not in (out / "hero-1.tif").read_bytes()
    refused = runner.invoke(app, ["export", str(out), "--project", "night-city"])
    assert refused.exit_code == 2 and "nothing approved" in refused.output


def test_linstudio_serve_answers_over_http(isolated_home):
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "linstudio.cli", "serve", "--port", str(port)],
                              env={**os.environ, "LINSTUDIO_HOME": str(isolated_home)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/renders", timeout=5)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read().decode()
                assert time.monotonic() < deadline, "linstudio serve did not answer within 60 s"
                time.sleep(0.2)
        assert response.json() == {"items": [], "next": None}
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    finally:
        server.terminate()
        server.wait(10)
