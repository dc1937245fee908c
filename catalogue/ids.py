"""Identifiers and the clock.

Render and submission ids are ULIDs (26 Crockford base32 characters: 48 bits of milliseconds then
80 random bits). They sort by creation time as plain strings on every database, so the gallery can
page with `WHERE id < :after ORDER BY id DESC` (keyset paging) and no database sequence is needed —
two workers on different hosts never collide and an id can be chosen before the row is written
(it goes into the PNG's metadata).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID_LENGTH = 26


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the catalogue never stores local times)."""
    return datetime.now(UTC)


def new_ulid(now: datetime) -> str:
    """A fresh ULID whose time part is `now` (an aware datetime)."""
    millis = int(now.timestamp() * 1000)
    if not 0 <= millis < 1 << 48:
        raise ValueError(f"time {now.isoformat()} is outside the ULID range")
    value = (millis << 80) | secrets.randbits(80)
    chars = []
    for _ in range(ULID_LENGTH):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return "".join(reversed(chars))
