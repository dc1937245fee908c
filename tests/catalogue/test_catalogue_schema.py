"""Migrations: from an empty database to head, idempotent, race-safe, and in step with the models."""

from __future__ import annotations

import threading

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from catalogue import Catalogue
from catalogue.db import make_engine
from catalogue.migrate import VERSION_TABLE, current_revision, head_revision, upgrade
from catalogue.models import Base

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
            context = MigrationContext.configure(connection, opts={"compare_type": True,
                                                                   "version_table": VERSION_TABLE})
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


def test_two_processes_migrating_a_fresh_database_at_once_both_succeed(catalogue_urls):
    """Two workers started together both call migrate() on first use: neither may fail."""
    catalogues = [Catalogue.open(catalogue_urls.database_url, catalogue_urls.store_url) for _ in range(2)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def migrate(catalogue: Catalogue) -> None:
        barrier.wait()
        try:
            catalogue.migrate()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(c,)) for c in catalogues]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == []
        assert current_revision(catalogues[0].engine) == head_revision()
    finally:
        for catalogue in catalogues:
            catalogue.close()
