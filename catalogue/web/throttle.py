"""Sign-in back-off: failed sign-ins in a row, per account name and per client address, slow the next ones.

After `free` failures in a row a key (an account name, or a client address) must wait before the
next attempt: 1 s, then 2, 4, 8 ... doubling with each further failure, up to 15 minutes. An
attempt while a key waits is refused at once with 429 and `Retry-After` — it runs no scrypt and
counts nothing, so a burst costs the server almost nothing and a legitimate user who waits out
the delay gets in. Refusing was chosen over sleeping inside the request: a sleeping request holds
a worker thread, and a burst of them would take the gallery down for everyone.

- Per account (5 free): guessing one person's password is slowed however many machines guess.
  Unknown names are counted the same way as real ones, so the back-off does not tell which names exist.
- Per address (20 free, for a studio behind one NAT): one machine guessing many accounts is slowed.

Each attempt is charged *before* its password is checked, in the same transaction that checks the
wait, and refunded when it succeeds: so concurrent attempts cannot all slip in before the first
failure is written. A success clears the account's count and refunds the address's charge; a quiet
hour (no failure) forgets a key, and such rows are pruned as new failures come in.

The counts live in the catalogue database (`sign_in_failures`, migration 0004), not in process
memory: every gallery process behind a load balancer shares them. Functions take the caller's
session and never commit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from catalogue.db import insert_ignoring_conflicts
from catalogue.models import NAME_LEN, SignInFailure


@dataclass(frozen=True)
class Policy:
    """How many failures a key gets free, the first wait after them, and the longest wait (seconds)."""

    free: int
    first_wait: float = 1.0
    max_wait: float = 15 * 60.0

    def wait(self, failures: int) -> float:
        """Seconds to wait after `failures` failures in a row (0 while they are free)."""
        if failures < self.free:
            return 0.0
        return min(self.max_wait, self.first_wait * 2 ** min(failures - self.free, 32))


ACCOUNT = Policy(free=5)
ADDRESS = Policy(free=20)
FORGET_AFTER = timedelta(hours=1)  # a key with no failure for this long (after its wait) starts again at 0


@dataclass(frozen=True)
class Verdict:
    """The outcome of charging an attempt: allowed, or refused until `retry_at` because of `reasons`."""

    retry_at: datetime | None
    reasons: tuple[str, ...] = ()
    account_failures: int = 0
    address_failures: int = 0

    @property
    def allowed(self) -> bool:
        return self.retry_at is None

    def retry_after(self, now: datetime) -> int:
        """Whole seconds until the next attempt may be made (at least 1)."""
        return max(1, math.ceil((self.retry_at - now).total_seconds())) if self.retry_at else 0

    def message(self, now: datetime) -> str:
        seconds = self.retry_after(now)
        return (f"Too many failed sign-ins {' and '.join(self.reasons)}: try again in {seconds} second"
                f"{'' if seconds == 1 else 's'}.")


def account_key(name: str) -> str:
    return "account:" + name[:NAME_LEN]


def address_key(address: str) -> str:
    return "address:" + address[:NAME_LEN]


def charge(session: Session, name: str, address: str, now: datetime) -> Verdict:
    """Refuse the attempt if the account or the address must still wait; else count it as a failure
    (refunded by `succeeded`) and allow it."""
    keys = {account_key(name): ACCOUNT, address_key(address): ADDRESS}
    insert_ignoring_conflicts(session, SignInFailure.__table__,
                              [{"key": key, "failures": 0, "last_failure_at": now} for key in keys], ["key"])
    rows = {row.key: row for row in session.scalars(select(SignInFailure).where(SignInFailure.key.in_(keys))
                                                    .with_for_update())}
    counts, waits, reasons = {}, [], []
    for key, policy in keys.items():
        row = rows[key]
        failures = 0 if _forgotten(row, policy, now) else row.failures
        until = row.last_failure_at + timedelta(seconds=policy.wait(failures))
        if failures and until > now:
            waits.append(until)
            reasons.append("for this account" if policy is ACCOUNT else "from this address")
        counts[key] = failures
    if waits:
        return Verdict(max(waits), tuple(reasons), counts[account_key(name)], counts[address_key(address)])
    for key, row in rows.items():
        row.failures = counts[key] + 1
        row.last_failure_at = now
    session.execute(delete(SignInFailure).where(SignInFailure.last_failure_at < now - FORGET_AFTER
                                                - timedelta(seconds=max(ACCOUNT.max_wait, ADDRESS.max_wait))))
    return Verdict(None, (), counts[account_key(name)] + 1, counts[address_key(address)] + 1)


def succeeded(session: Session, name: str, address: str) -> None:
    """A right password: the account starts again at 0, and the address gets this attempt's charge back."""
    session.execute(delete(SignInFailure).where(SignInFailure.key == account_key(name)))
    session.execute(update(SignInFailure).where(SignInFailure.key == address_key(address),
                                                SignInFailure.failures > 0)
                    .values(failures=SignInFailure.failures - 1))


def _forgotten(row: SignInFailure, policy: Policy, now: datetime) -> bool:
    return row.last_failure_at + timedelta(seconds=policy.wait(row.failures)) + FORGET_AFTER < now
