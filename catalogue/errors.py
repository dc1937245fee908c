"""The catalogue's own exceptions, so callers can tell "your input is wrong" from "a service blinked".

Database and network failures are deliberately *not* wrapped: the flow decides what to retry by
looking at SQLAlchemy / botocore / OSError types, and wrapping them would hide that. A full disk is
the exception: it is a capacity problem, not a blink, and the bare driver error does not say whose
disk (`DatabaseFullError`, like the file store's `StoreError`).
"""

from __future__ import annotations


class CatalogueError(Exception):
    """Base class for errors the catalogue raises itself (never for a database or network failure)."""


class UnknownJobError(CatalogueError, KeyError):
    """A job key that no `plan_jobs` call has recorded."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown job"


class InvalidRecordError(CatalogueError, ValueError):
    """A job or render record that lacks a field or carries one of the wrong type."""


class IntentSweptError(CatalogueError):
    """An ingest's upload intent was swept while it was uploading: its objects are gone, so no row may be written."""


class DatabaseFullError(CatalogueError):
    """The disk under the embedded (SQLite) catalogue database is full: said once, naming the file.

    Not an availability error: space does not come back in seconds, so the flow fails the job at once
    with this reason instead of retrying (flows/transient.py), as it does for a full file store.
    """


class StoreError(CatalogueError):
    """The object store is misconfigured or refused a key (bad URL, missing bucket, key escaping the root)."""


class ObjectNotFoundError(StoreError, KeyError):
    """`get` or `size` of a key that the store does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "object not found"
