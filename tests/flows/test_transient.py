"""Which failures are attempted again (flows/transient.py): availability yes, a full disk no."""

from __future__ import annotations

import errno
import sqlite3

import pytest
from sqlalchemy import exc as sa_exc

from flows.transient import is_disk_full, is_transient


def driver_error(message: str) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("INSERT INTO renders ...", {}, sqlite3.OperationalError(message))


@pytest.mark.parametrize("error", [
    driver_error("unable to open database file"),
    driver_error("database is locked"),
    ConnectionError("object store unreachable"),
    OSError(errno.ECONNREFUSED, "Connection refused"),
])
def test_availability_errors_are_transient(error):
    assert is_transient(error) and not is_disk_full(error)


@pytest.mark.parametrize("error", [
    driver_error("database or disk is full"),
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("upload failed: [Errno 28] No space left on device"),
])
def test_a_full_disk_is_not_transient(error):
    assert is_disk_full(error) and not is_transient(error)


def test_a_full_disk_behind_a_transient_looking_wrapper_is_still_not_transient():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise ConnectionError("the store closed the connection") from inner
    except ConnectionError as outer:
        assert not is_transient(outer)


def test_errors_that_are_neither_stay_not_transient():
    assert not is_transient(ValueError("the engine refused this job")) and not is_disk_full(ValueError("x"))
