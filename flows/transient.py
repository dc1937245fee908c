"""Which failures are worth retrying.

A render that failed because S3 blinked or the database restarted will succeed if tried again;
one that failed because the manifest asked for something impossible, or the model is missing,
will fail the same way every time and should be reported at once. Only the first kind is retried.
"""

from __future__ import annotations

import errno

from catalogue.errors import DatabaseFullError

_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EPIPE, errno.EAGAIN,
                     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNABORTED}


_DISK_FULL_TEXTS = ("database or disk is full", "no space left on device", "disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc`, or what caused it, says a disk (the database's or the store's) is full."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DatabaseFullError):  # SQLite's full disk, named by catalogue.db
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if getattr(exc, "sqlstate", None) == "53100":  # PostgreSQL disk_full
            return True
        if any(text in str(exc).lower() for text in _DISK_FULL_TEXTS):
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return False


def is_transient(exc: BaseException) -> bool:
    """True for network, object-store and database-availability errors; False for everything else.

    A full disk is not transient even when the driver reports it as an operational error: it stays
    full for longer than any retry waits, so the job fails at once with the reason.
    """
    if is_disk_full(exc):
        return False
    try:
        from sqlalchemy import exc as sa_exc

        if isinstance(exc, (sa_exc.OperationalError, sa_exc.DisconnectionError, sa_exc.TimeoutError)):
            return True
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        from botocore import exceptions as bc_exc

        if isinstance(exc, (bc_exc.EndpointConnectionError, bc_exc.ConnectionClosedError,
                            bc_exc.ReadTimeoutError, bc_exc.ConnectTimeoutError)):
            return True
        if isinstance(exc, bc_exc.ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return status >= 500 or error.get("Code") in {"SlowDown", "RequestTimeout", "ServiceUnavailable",
                                                          "InternalError", "Throttling"}
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A failure reason for the catalogue and the summary: the exception's type and first line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"
