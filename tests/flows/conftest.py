"""Fixtures for flow tests: one real Prefect server per test session, backends, small manifests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from flow_support import SMALL_MANIFEST, write_manifest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_api(postgres_url):
    """A real Prefect server (backed by the session's PostgreSQL), started once per test session.

    In-process flows are pointed at it with Prefect's temporary_settings; subprocesses get
    PREFECT_API_URL from `prefect_env`.
    """
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database,
                         autocommit=True) as conn:
        conn.execute("CREATE DATABASE prefect_server")
    db_url = url.set(drivername="postgresql+asyncpg", database="prefect_server").render_as_string(hide_password=False)
    port = _free_port()
    home = Path(tempfile.mkdtemp(prefix="prefect-server-"))
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_DATABASE_CONNECTION_URL": db_url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
           "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100"}
    env.pop("PREFECT_API_URL", None)
    prefect_bin = str(Path(sys.executable).parent / "prefect")
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([prefect_bin, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api_url = f"http://127.0.0.1:{port}/api"
    import urllib.request

    deadline = time.time() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"Prefect server exited; log:\n{(home / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"Prefect server not healthy in 120 s; log:\n{(home / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        yield api_url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(params=["embedded", "production"])
def backend(request, tmp_path, monkeypatch, session_root):
    """Catalogue settings: embedded (SQLite + folder) or production (PostgreSQL + SeaweedFS S3)."""
    from linstudio.settings import get_settings

    monkeypatch.setenv("LINSTUDIO_HOME", str(tmp_path / "home"))
    if request.param == "production":
        monkeypatch.setenv("LINSTUDIO_DATABASE_URL", request.getfixturevalue("fresh_postgres_url"))
        monkeypatch.setenv("LINSTUDIO_STORE_URL", request.getfixturevalue("fresh_s3_store_url"))
    else:
        monkeypatch.delenv("LINSTUDIO_DATABASE_URL", raising=False)
        monkeypatch.delenv("LINSTUDIO_STORE_URL", raising=False)
    # The tiny models are built once per session, not once per test home.
    models = session_root / "home" / "models"
    (tmp_path / "home").mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    os.symlink(models, tmp_path / "home" / "models")
    get_settings.cache_clear()
    yield request.param
    get_settings.cache_clear()


@pytest.fixture
def small_manifest(tmp_path) -> Path:
    """Three jobs at 64 px on the tiny SD-1.5 model."""
    return write_manifest(tmp_path / "manifests", "props.yaml", SMALL_MANIFEST)
