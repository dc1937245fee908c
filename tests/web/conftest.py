"""Fixtures for the gallery tests: a catalogue with a few real (tiny) renders, the app, clients.

Renders go through the real ingest (PNG metadata, thumbnail, object + row), so downloads,
thumbnails and exports read real objects. `web_cat` runs on SQLite + a folder; tests that must
hold on both backends use `both_cat` (parametrized over catalogue_urls: SQLite + folder, and
PostgreSQL + SeaweedFS S3).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from web_support import StepClock

from catalogue import Catalogue


@pytest.fixture
def web_cat(tmp_path):
    cat = Catalogue.open(f"sqlite:///{tmp_path / 'catalogue.db'}", (tmp_path / "store").as_uri(),
                         clock=StepClock(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)))
    cat.migrate()
    yield cat
    cat.close()


@pytest.fixture
def both_cat(catalogue_urls):
    cat = Catalogue.open(catalogue_urls.database_url, catalogue_urls.store_url,
                         clock=StepClock(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)))
    cat.migrate()
    yield cat
    cat.close()


@pytest.fixture
def settings(tmp_path):
    from linstudio.settings import Settings

    return Settings(home=tmp_path / "home", secret_key="test-secret-key-0123456789")


@pytest.fixture
def app(web_cat, settings):
    from catalogue.web import create_app

    return create_app(web_cat, settings)


@pytest.fixture
def client(app):
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def token(web_cat):
    from catalogue.auth import create_token

    with web_cat.transaction() as session:
        return create_token(session, "pipeline-bot", web_cat.clock())


@pytest.fixture
def user(web_cat):
    from catalogue.auth import add_user

    with web_cat.transaction() as session:
        add_user(session, "alice", "correct horse battery", web_cat.clock())
    return "alice"
