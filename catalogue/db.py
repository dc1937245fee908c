"""Engines and sessions for the two supported databases: SQLite (embedded default) and PostgreSQL.

SQLite needs three things PostgreSQL gives for free, set on every new connection:
- WAL journal, so readers (the gallery, `catalogue ls`) never block the writer;
- a busy timeout, so concurrent workers wait for the write lock instead of failing at once;
- foreign keys, which SQLite ignores unless asked.
A full disk under the SQLite file is turned into `DatabaseFullError` naming the file (`_name_a_full_disk`),
so a job fails at once saying where space ran out instead of "database or disk is full".
It also needs write transactions to take the write lock when they *begin* (`BEGIN IMMEDIATE`):
a deferred transaction that reads and then writes can fail with "database is locked" even with a
busy timeout, because its snapshot went stale. Taking the lock up front makes every transaction
wait its turn instead. Transactions are kept short for that reason (hashing objects, uploads and
rendering all happen outside them).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from catalogue.errors import CatalogueError, DatabaseFullError

SQLITE_BUSY_TIMEOUT_MS = 30_000
# An I/O error is taken for a full disk when less than this is left on the database's file system (a
# failed WAL append reports SQLITE_IOERR, not SQLITE_FULL, on some file systems).
SQLITE_NEARLY_FULL_BYTES = 1 << 20
# SQLite caps bound parameters per statement (32766 in current builds, 999 in old ones).
IN_CHUNK = 500


def normalise_url(database_url: str) -> str:
    """Accept plain `postgresql://` / `postgres://` URLs and point them at psycopg 3 (the driver installed)."""
    url = make_url(database_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise CatalogueError(
            f"catalogue database {url.render_as_string(hide_password=True)!r}: only sqlite:/// and "
            "postgresql+psycopg:// URLs are supported"
        )
    return url.render_as_string(hide_password=False)


def make_engine(database_url: str) -> Engine:
    """An engine for `database_url`, with the SQLite connection settings above where they apply."""
    url = make_url(normalise_url(database_url))
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine)
        _name_a_full_disk(engine, url.database)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see the BEGIN below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _name_a_full_disk(engine: Engine, database: str | None) -> None:
    """Raise `DatabaseFullError` naming the database file instead of SQLite's bare "database or disk is full"."""
    if not database or database == ":memory:":
        return
    path = Path(database).expanduser().absolute()

    @event.listens_for(engine, "handle_error")
    def _on_error(context):
        error = context.original_exception
        if not _sqlite_disk_full(error, path):
            return None
        return DatabaseFullError(
            f"no space left on device for the catalogue database at {path} (SQLite: {str(error).strip()}); "
            "free space or grow the disk, then run again")


def _sqlite_disk_full(error: BaseException, path: Path) -> bool:
    """SQLITE_FULL, or an I/O error while the file system under `path` is (nearly) out of space."""
    if not isinstance(error, sqlite3.Error):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "database or disk is full" in str(error):
        return True
    if code is None or code & 0xFF != sqlite3.SQLITE_IOERR:
        return False
    try:
        stat = os.statvfs(path.parent)
    except OSError as exc:
        return exc.errno == errno.ENOSPC
    return stat.f_bavail * stat.f_frsize < SQLITE_NEARLY_FULL_BYTES


def _enable_wal(cursor) -> None:
    """Switch the database file to WAL (a persistent setting), waiting out other connections.

    Two processes opening a brand-new file at once both try the switch, which needs an exclusive
    lock, and SQLite answers the loser "database is locked" at once instead of calling the busy
    handler. Retry until the busy timeout; once any connection has switched, the others find WAL.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (results are returned after the transaction)."""
    return sessionmaker(engine, expire_on_commit=False)


def insert_ignoring_conflicts(session: Session, table: Table, rows: Sequence[dict], unique: Iterable[str]) -> None:
    """INSERT rows, skipping those that collide on the unique columns `unique`.

    `ON CONFLICT DO NOTHING` on both backends: two processes planning the same manifest at once both
    succeed instead of one failing on a unique violation half-way.
    """
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    columns = list(unique)
    for start in range(0, len(rows), IN_CHUNK):
        statement = insert(table).values(list(rows[start : start + IN_CHUNK]))
        session.execute(statement.on_conflict_do_nothing(index_elements=columns))


def chunked(values: Sequence, size: int = IN_CHUNK) -> Iterable[Sequence]:
    """`values` in slices small enough for one `IN (...)` on SQLite."""
    for start in range(0, len(values), size):
        yield values[start : start + size]
