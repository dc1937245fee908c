"""The catalogue: what exists, how it was made, and where its images are.

SQLAlchemy models with Alembic migrations (SQLite embedded, PostgreSQL in production), an object
store chosen by URL (a folder or S3), and the ingest protocol that keeps the two in step whatever
fails. Start at `Catalogue` (catalogue.api).
"""

from catalogue.api import Catalogue
from catalogue.check import CheckReport
from catalogue.errors import (
    CatalogueError,
    IntentSweptError,
    InvalidRecordError,
    ObjectNotFoundError,
    StoreError,
    UnknownJobError,
)
from catalogue.pngmeta import read_png_record
from catalogue.store import ObjectStore, open_store

__all__ = [
    "Catalogue",
    "CatalogueError",
    "CheckReport",
    "IntentSweptError",
    "InvalidRecordError",
    "ObjectNotFoundError",
    "ObjectStore",
    "StoreError",
    "UnknownJobError",
    "open_store",
    "read_png_record",
]
