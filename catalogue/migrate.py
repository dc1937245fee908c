"""Bring a catalogue database to the newest schema, programmatically (no alembic.ini needed).

`upgrade(engine)` is idempotent and safe when several processes call it at once on a fresh
database (two workers started together): the whole upgrade runs in one transaction that first
takes a lock — `pg_advisory_xact_lock` on PostgreSQL, `BEGIN IMMEDIATE` on SQLite (catalogue.db) —
so the second process waits, then finds the schema at head and does nothing.

The version table is `linstudio_alembic_version`, not Alembic's default, so the catalogue can share
a PostgreSQL database with other Alembic-managed apps (a Prefect server, say) without the two
fighting over one `alembic_version` row.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "linstudio_alembic_version"
# An arbitrary constant naming "the catalogue's migration lock" among PostgreSQL advisory locks.
_PG_MIGRATION_LOCK = 0x4C494E5354554449  # "LINSTUDI"
# Alembic keeps its running context in module globals: two threads of one process must not run it at once.
_ALEMBIC_LOCK = threading.Lock()


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations (`%` doubled for configparser)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["version_table"] = VERSION_TABLE
    return config


def head_revision() -> str:
    """The newest migration's revision id."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships 0001
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database behind `engine` to `revision`, serialised against concurrent callers."""
    config = alembic_config()
    with _ALEMBIC_LOCK, engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
