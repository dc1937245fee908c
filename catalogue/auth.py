"""Who is asking: users with passwords, API tokens for scripts, signed session cookies, CSRF tokens.

Passwords are hashed with `hashlib.scrypt` from the standard library: scrypt is memory-hard (the
property that makes GPU guessing expensive), and using the stdlib means no extra compiled
dependency to keep patched. Parameters (n=2**14, r=8, p=1: ~16 MiB, ~50 ms) are stored inside each
hash, so they can be raised later without invalidating old hashes.

API tokens are 32 random bytes; only their SHA-256 is stored. A fast hash is right here (unlike
for passwords): the token has 256 bits of entropy, so there is nothing to guess.

Sessions are a cookie `name|expiry|hmac`, signed with the secret key: the server keeps no session
table. The HMAC also covers the user's row id and password hash (`session_binding`), read back on
every request, so a session ends the moment its user is disabled, removed (a new user of the same
name gets a new hash, with a fresh salt) or given a new password. CSRF tokens are an HMAC of a
random per-browser cookie (double submit, signed), so a form post from another site — which
cannot read our cookies — cannot forge one.

Functions that touch the database take the caller's session and never commit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from catalogue.errors import CatalogueError
from catalogue.models import ApiToken, User

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SESSION_SECONDS = 12 * 3600
TOKEN_PREFIX = "lst_"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,200}$")
MIN_PASSWORD = 8


class AuthError(CatalogueError, ValueError):
    """A user or token that cannot be created (bad name, short password, name taken)."""


# -- passwords --------------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    """`scrypt$n$r$p$salt$hash` (base64 parts) for `password`, with a fresh salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)])


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches `stored` (constant-time compare; False for any malformed hash)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.urlsafe_b64decode(digest + "==")
        actual = hashlib.scrypt(password.encode(), salt=base64.urlsafe_b64decode(salt + "=="), n=int(n), r=int(r),
                                p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise AuthError(f"{what} name {name!r}: use 1-200 letters, digits and . _ @ -")
    return name


# -- users and tokens -------------------------------------------------------------------------------


def add_user(session: Session, name: str, password: str, now: datetime) -> None:
    """Create user `name`, or set a new password if they exist (so a forgotten password is one command).

    A new password also enables a disabled user again and ends their other sessions (the session
    binding covers the hash).
    """
    check_name(name, "user")
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"user {name!r}: the password must have at least {MIN_PASSWORD} characters")
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        session.add(User(name=name, password_hash=hash_password(password), created_at=now))
    else:
        user.password_hash = hash_password(password)
        user.disabled_at = None


@dataclass(frozen=True)
class SignIn:
    """What a sign-in attempt is checked against, read in one short transaction (scrypt runs outside it)."""

    name: str
    password_hash: str
    disabled: bool
    binding: str


def sign_in_record(session: Session, name: str) -> SignIn | None:
    """The stored hash, state and session binding of user `name`, or None when there is no such user."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        return None
    return SignIn(user.name, user.password_hash, user.disabled_at is not None, _binding(user))


def password_matches(record: SignIn | None, password: str) -> bool:
    """Whether `password` is the password of `record`; for an unknown user (None) the dummy hash is
    verified instead, so an unknown name costs exactly what a wrong password does."""
    if record is None:
        verify_password(password, _DUMMY_HASH)
        return False
    return verify_password(password, record.password_hash)


def authenticate(session: Session, name: str, password: str) -> str | None:
    """The user's name when `password` is theirs and they are not disabled, else None (same work either way)."""
    record = sign_in_record(session, name)
    if not password_matches(record, password) or record.disabled:
        return None
    return record.name


def session_binding(session: Session, name: str) -> str | None:
    """What a session cookie of `name` is signed together with, or None when `name` may not be signed in
    (no such user, or disabled): checked on every request, so a change takes effect on the next one."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None or user.disabled_at is not None:
        return None
    return _binding(user)


def is_disabled(session: Session, name: str) -> bool:
    """Whether `name` is a user who was disabled (a name with no user row is not)."""
    return session.scalar(select(User.disabled_at).where(User.name == name)) is not None


def _binding(user: User) -> str:
    # The hash has a fresh salt each time it is set, so a new password (`users add`) ends old sessions,
    # and so does giving a removed user's name to someone new (SQLite may even reuse the row id).
    return f"{user.id}:{user.password_hash}"


def list_users(session: Session) -> list[dict[str, Any]]:
    """Every user, by name: created_at and disabled_at (ISO 8601, or None). Never the hash."""
    return [{"name": u.name, "created_at": u.created_at.isoformat(),
             "disabled_at": u.disabled_at.isoformat() if u.disabled_at else None}
            for u in session.scalars(select(User).order_by(User.name))]


def disable_user(session: Session, name: str, now: datetime) -> None:
    """Refuse `name`'s sign-ins and sessions from now on (their reviews keep their name)."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise AuthError(f"user {name!r}: no such user (see `linstudio users ls`)")
    if user.disabled_at is None:
        user.disabled_at = now


def remove_user(session: Session, name: str) -> None:
    """Delete user `name`. Review history names reviewers as text, so their decisions stay attributed."""
    if session.execute(delete(User).where(User.name == name)).rowcount != 1:
        raise AuthError(f"user {name!r}: no such user (see `linstudio users ls`)")


def create_token(session: Session, name: str, now: datetime) -> str:
    """A new API token named `name` (the name is what review history records); returns the token itself."""
    check_name(name, "token")
    existing = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if existing is not None:
        # A revoked token's name stays taken: review history's `token:NAME` must keep meaning one token.
        state = " (revoked)" if existing.revoked_at else ""
        raise AuthError(f"token {name!r} already exists{state}; pick another name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_sha256=hashlib.sha256(token.encode()).hexdigest(), created_at=now))
    return token


def token_owner(session: Session, token: str) -> str | None:
    """The name of the live API token `token`, or None when it is unknown or revoked (looked up by hash:
    the database never sees the token)."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    return session.scalar(select(ApiToken.name).where(ApiToken.token_sha256 == digest, ApiToken.revoked_at.is_(None)))


def list_tokens(session: Session) -> list[dict[str, Any]]:
    """Every API token, by name: created_at and revoked_at (ISO 8601, or None). Never the token or its hash."""
    return [{"name": t.name, "created_at": t.created_at.isoformat(),
             "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None}
            for t in session.scalars(select(ApiToken).order_by(ApiToken.name))]


def revoke_token(session: Session, name: str, now: datetime) -> None:
    """Refuse token `name` from the next request on; the row stays, so the name is not reused."""
    result = session.execute(update(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
                             .values(revoked_at=now))
    if result.rowcount != 1:
        exists = session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None
        raise AuthError(f"token {name!r}: " + ("already revoked" if exists else
                                               "no such token (see `linstudio tokens ls`)"))


# Verified instead of a real hash when the name is unknown, so both paths run the same KDF with the
# same parameters (built from them, so raising SCRYPT_N raises it too) and take the same time.
_DUMMY_HASH = "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), "A" * 22, "A" * 43])


# -- signing: sessions and CSRF ---------------------------------------------------------------------


class Signer:
    """Signs session cookies and CSRF tokens with the gallery's secret key."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise AuthError("the secret key must be at least 16 bytes (LINSTUDIO_SECRET_KEY)")
        self._secret = secret

    def _mac(self, purpose: str, value: str) -> str:
        return _b64(hmac.new(self._secret, f"{purpose}|{value}".encode(), hashlib.sha256).digest())

    def session_cookie(self, user: str, now: float | None = None, binding: str = "") -> str:
        """A cookie signing `user` in for SESSION_SECONDS, signed together with `binding` (session_binding)."""
        expires = int((now or time.time()) + SESSION_SECONDS)
        body = f"{user}|{expires}"
        return f"{body}|{self._mac('session', f'{body}|{binding}')}"

    def session_user(self, cookie: str | None, now: float | None = None,
                     binding_of: Callable[[str], str | None] | None = None) -> str | None:
        """The signed-in user named by a session cookie, or None when it is missing, forged, expired, or
        `binding_of(name)` (the current session_binding) is None or no longer the one it was signed with."""
        if not cookie or cookie.count("|") != 2:
            return None
        user, expires, mac = cookie.split("|")
        if not expires.isdigit() or int(expires) < (now or time.time()):
            return None
        binding = binding_of(user) if binding_of else ""
        if binding is None:
            return None
        if not hmac.compare_digest(mac, self._mac("session", f"{user}|{expires}|{binding}")):
            return None
        return user

    def csrf_token(self, browser_id: str) -> str:
        return self._mac("csrf", browser_id)

    def check_csrf(self, browser_id: str | None, token: str | None) -> bool:
        return bool(browser_id and token) and hmac.compare_digest(token, self.csrf_token(browser_id))


def new_browser_id() -> str:
    """The random per-browser value CSRF tokens are bound to (kept in a cookie)."""
    return secrets.token_urlsafe(24)


def load_secret(configured: str | None, home: Path) -> bytes:
    """The configured secret key, or one generated once and kept (mode 0600) in `home/secret_key`.

    Persisting it keeps artists signed in across restarts of `linstudio serve`; several gallery
    processes behind a load balancer must share LINSTUDIO_SECRET_KEY instead.
    """
    if configured:
        return configured.encode()
    path = home / "secret_key"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        candidate = path.with_suffix(".tmp")
        candidate.write_text(secrets.token_urlsafe(48))
        candidate.chmod(0o600)
        candidate.replace(path)
    return path.read_text().strip().encode()
