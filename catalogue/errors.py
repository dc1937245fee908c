"""The catalogue's own exceptions, so callers can tell "your input is wrong" from "a service blinked".

Database and network failures are deliberately *not* wrapped: the flow decides what to retry by
looking at SQLAlchemy / botocore / OSError types, and wrapping them would hide that.
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


class StoreError(CatalogueError):
    """The object store is misconfigured or refused a key (bad URL, missing bucket, key escaping the root)."""


class ObjectNotFoundError(StoreError, KeyError):
    """`get` or `size` of a key that the store does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "object not found"
