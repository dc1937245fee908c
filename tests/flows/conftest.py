"""Fixtures for flow tests: backends and small manifests. The session's real Prefect server is
`prefect_api` from tests/services.py (shared with the fault suite)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flow_support import SMALL_MANIFEST, write_manifest


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
