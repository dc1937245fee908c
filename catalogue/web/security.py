"""Who is asking and whether they may: the gallery's request-level authentication and CSRF checks.

A request is made by one of
- a script with `Authorization: Bearer TOKEN` (an API token; recorded as `token:NAME`),
- a user behind the studio's single-sign-on proxy (the LINSTUDIO_AUTH_HEADER header), or
- a user signed in with a password (a signed session cookie),
or by nobody. Reading is open unless LINSTUDIO_READ_REQUIRES_LOGIN; changing anything needs
someone. Browser-borne credentials (cookie, SSO header) are sent by the browser on its own, so
their state changes also need the CSRF token from one of our pages; bearer tokens are not, so
they do not.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, Request

from catalogue import auth

SESSION_COOKIE = "linstudio_session"
BROWSER_COOKIE = "linstudio_browser"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Viewer:
    """The requester: `name` as review history records it, and how they proved it."""

    name: str
    via: str  # "token" | "header" | "session"

    @property
    def needs_csrf(self) -> bool:
        return self.via != "token"


def viewer(request: Request) -> Viewer | None:
    """The authenticated requester, or None. A bearer token that is wrong is an error, not anonymity.

    Every credential is checked against the database on every request, so `linstudio tokens
    revoke` and `users disable` / `users remove` take effect on the next one — signed session
    cookies included (their signature covers the user's current row; see catalogue.auth).
    """
    state = request.app.state
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        token = header[7:].strip()
        with state.catalogue.transaction() as session:
            name = auth.token_owner(session, token)
        if name is None:
            raise HTTPException(401, "invalid or revoked API token", headers={"WWW-Authenticate": "Bearer"})
        return Viewer(f"token:{name}", "token")
    if state.settings.auth_header:
        sso_user = request.headers.get(state.settings.auth_header, "").strip()[:200]
        if sso_user:
            with state.catalogue.transaction() as session:
                disabled = auth.is_disabled(session, sso_user)
            if disabled:  # `users disable` refuses a name however it arrives
                raise HTTPException(403, f"user {sso_user} is disabled in this gallery")
            return Viewer(sso_user, "header")
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    with state.catalogue.transaction() as session:
        user = state.signer.session_user(cookie, binding_of=lambda name: auth.session_binding(session, name))
    return Viewer(user, "session") if user else None


def reader(request: Request) -> Viewer | None:
    """Dependency for reads: anyone, unless the studio closed reading to signed-in people."""
    who = viewer(request)
    if who is None and request.app.state.settings.read_requires_login:
        raise HTTPException(401, "sign in or send an API token to read the catalogue",
                            headers={"WWW-Authenticate": "Bearer"})
    return who


def browser_id(request: Request) -> str:
    """This browser's CSRF binding (set by the middleware in catalogue.web.app on its first visit)."""
    return request.state.browser_id


def csrf_token(request: Request) -> str:
    return request.app.state.signer.csrf_token(browser_id(request))


WRITE_REFUSAL = "sign in or send an API token to change the catalogue"


async def writer(request: Request) -> Viewer:
    """Dependency for state changes: someone authenticated, and for browser credentials a valid CSRF token."""
    who = viewer(request)
    if who is None:
        raise HTTPException(401, WRITE_REFUSAL, headers={"WWW-Authenticate": "Bearer"})
    if who.needs_csrf:
        await require_csrf(request)
    return who


async def require_csrf(request: Request) -> None:
    """Refuse a browser post without the CSRF token of one of our pages (form field or X-CSRF-Token header)."""
    token = request.headers.get(CSRF_HEADER)
    if token is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        token = (await request.form()).get(CSRF_FIELD)
    if not request.app.state.signer.check_csrf(request.cookies.get(BROWSER_COOKIE), token if isinstance(token, str)
                                                else None):
        raise HTTPException(403, "missing or invalid CSRF token: reload the page and try again")
