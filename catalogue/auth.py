"""Who is asking: users with passwords, API tokens for scripts, signed session cookies, CSRF tokens.

Passwords are hashed with `hashlib.scrypt` from the standard library: scrypt is memory-hard (the
property that makes GPU guessing expensive), and using the stdlib means no extra compiled
dependency to keep patched. Parameters (n=2**14, r=8, p=1: ~16 MiB, ~50 ms) are stored inside each
hash, so they can be raised later without invalidating old hashes.

API tokens are 32 random bytes; only their SHA-256 is stored. A fast hash is right here (unlike
for passwords): the token has 256 bits of entropy, so there is nothing to guess.

Sessions are a cookie `name|expiry|hmac`, signed with the secret key: the server keeps no session
table. CSRF tokens are an HMAC of a random per-browser cookie (double submit, signed), so a form
post from another site — which cannot read our cookies — cannot forge one.

Functions that touch the database take the caller's session and never commit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
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
    """Create user `name`, or set a new password if they exist (so a forgotten password is one command)."""
    check_name(name, "user")
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"user {name!r}: the password must have at least {MIN_PASSWORD} characters")
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        session.add(User(name=name, password_hash=hash_password(password), created_at=now))
    else:
        user.password_hash = hash_password(password)


def authenticate(session: Session, name: str, password: str) -> str | None:
    """The user's name when `password` is theirs, else None (same work either way, so timing tells nothing)."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        verify_password(password, _DUMMY_HASH)
        return None
    return user.name if verify_password(password, user.password_hash) else None


def create_token(session: Session, name: str, now: datetime) -> str:
    """A new API token named `name` (the name is what review history records); returns the token itself."""
    check_name(name, "token")
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise AuthError(f"token {name!r} already exists; pick another name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_sha256=hashlib.sha256(token.encode()).hexdigest(), created_at=now))
    return token


def token_owner(session: Session, token: str) -> str | None:
    """The name of the API token `token`, or None (looked up by hash: the database never sees the token)."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    return session.scalar(select(ApiToken.name).where(ApiToken.token_sha256 == digest))


_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43


# -- signing: sessions and CSRF ---------------------------------------------------------------------


class Signer:
    """Signs session cookies and CSRF tokens with the gallery's secret key."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise AuthError("the secret key must be at least 16 bytes (LINSTUDIO_SECRET_KEY)")
        self._secret = secret

    def _mac(self, purpose: str, value: str) -> str:
        return _b64(hmac.new(self._secret, f"{purpose}|{value}".encode(), hashlib.sha256).digest())

    def session_cookie(self, user: str, now: float | None = None) -> str:
        expires = int((now or time.time()) + SESSION_SECONDS)
        body = f"{user}|{expires}"
        return f"{body}|{self._mac('session', body)}"

    def session_user(self, cookie: str | None, now: float | None = None) -> str | None:
        """The signed-in user named by a session cookie, or None when it is missing, forged or expired."""
        if not cookie or cookie.count("|") != 2:
            return None
        user, expires, mac = cookie.split("|")
        if not hmac.compare_digest(mac, self._mac("session", f"{user}|{expires}")):
            return None
        if not expires.isdigit() or int(expires) < (now or time.time()):
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
