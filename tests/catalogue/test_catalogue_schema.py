"""Migrations: from an empty database to head, idempotent, race-safe, and in step with the models."""

from __future__ import annotations

import subprocess
import sys
import time

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from catalogue.db import make_engine
from catalogue.migrate import VERSION_TABLE, current_revision, head_revision, upgrade
from catalogue.models import Base
from catalogue.search import include_name

TABLES = {"submissions", "assets", "jobs", "renders", "upload_intents", VERSION_TABLE}


def test_migrate_from_empty_reaches_head_and_is_idempotent(catalogue_urls):
    engine = make_engine(catalogue_urls.database_url)
    try:
        assert current_revision(engine) is None
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        upgrade(engine)  # a second run finds head and does nothing
        assert current_revision(engine) == head_revision()
        assert TABLES <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_models_match_the_migrations(catalogue_urls):
    """Autogenerate finds nothing to add or drop: the hand-written migration and the models agree."""
    engine = make_engine(catalogue_urls.database_url)
    try:
        upgrade(engine)
        with engine.connect() as connection:
            # include_name: full-text search objects live outside the models (catalogue.search, migration 0002).
            context = MigrationContext.configure(connection, opts={"compare_type": True,
                                                                   "version_table": VERSION_TABLE,
                                                                   "include_name": include_name})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_expected_indexes_exist(catalogue_urls):
    engine = make_engine(catalogue_urls.database_url)
    try:
        upgrade(engine)
        inspector = inspect(engine)
        render_indexes = {tuple(ix["column_names"]) for ix in inspector.get_indexes("renders")}
        assert {("created_at",), ("team", "project", "id"), ("parent_render_id",), ("model",)} <= render_indexes
        job_indexes = {tuple(ix["column_names"]) for ix in inspector.get_indexes("jobs")}
        assert ("state", "lease_expires_at") in job_indexes
        unique_job_keys = [uc["column_names"] for uc in inspector.get_unique_constraints("renders")]
        assert ["job_key"] in unique_job_keys
    finally:
        engine.dispose()


_RACER = """
import sys, time
from pathlib import Path
from catalogue.db import make_engine
from catalogue.migrate import upgrade
engine = make_engine(sys.argv[1])
gate = Path(sys.argv[2])
(gate.parent / f"ready-{sys.argv[3]}").touch()
while not gate.exists():
    time.sleep(0.005)
upgrade(engine)
"""


def test_two_processes_migrating_a_fresh_database_at_once_both_succeed(catalogue_urls, tmp_path):
    """Two workers started together both migrate on first use: neither may fail (database-level lock)."""
    gate = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, catalogue_urls.database_url, str(gate), str(n)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(2)]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{n}").exists() for n in range(2)) and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.touch()
    results = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], results
    engine = make_engine(catalogue_urls.database_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
