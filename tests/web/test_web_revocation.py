"""Revoked tokens and disabled or removed users are refused on their next request, sessions included;
their past reviews keep their names. Driven through the CLI commands people use (`linstudio tokens
revoke`, `users disable`, `users remove`) against the catalogue a gallery is serving."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner
from web_support import bearer, csrf_of, make_render, record, sign_in

from catalogue import Catalogue, auth

GOOD = "correct horse battery"


@pytest.fixture
def served(isolated_home, settings):
    """A gallery over the settings' catalogue (the one the CLI opens), with a render and alice."""
    from catalogue.web import create_app
    from linstudio.settings import get_settings

    cli = get_settings()
    cat = Catalogue.open(cli.resolved_database_url, cli.resolved_store_url)
    cat.migrate()
    with cat.transaction() as session:
        auth.add_user(session, "alice", GOOD, cat.clock())
    render_id = make_render(cat, record())
    with TestClient(create_app(cat, settings), raise_server_exceptions=False) as client:
        yield client, cat, render_id
    cat.close()


def linstudio(*args: str, input: str | None = None):
    from linstudio.cli import app

    return CliRunner().invoke(app, list(args), input=input)


def review(client, render_id, status="approved", **headers):
    return client.post(f"/api/renders/{render_id}/review", json={"status": status}, headers=headers)


def reviewers(client, render_id) -> list[str]:
    return [r["reviewer"] for r in client.get(f"/api/renders/{render_id}/reviews").json()]


def test_a_revoked_token_is_refused_on_its_next_request_and_its_reviews_keep_its_name(served):
    client, cat, render_id = served
    token = linstudio("tokens", "create", "nightly").output.strip().splitlines()[-1]
    assert review(client, render_id, **bearer(token)).status_code == 201

    revoked = linstudio("tokens", "revoke", "nightly")
    assert revoked.exit_code == 0, revoked.output
    refused = review(client, render_id, "rejected", **bearer(token))
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    assert reviewers(client, render_id) == ["token:nightly"]  # history keeps the name

    listed = json.loads(linstudio("tokens", "ls", "--json").output)
    assert [(t["name"], t["revoked_at"] is not None) for t in listed] == [("nightly", True)]
    assert token not in linstudio("tokens", "ls").output
    again = linstudio("tokens", "revoke", "nightly")
    assert again.exit_code == 2 and "already revoked" in again.output
    reused = linstudio("tokens", "create", "nightly")  # the name stays one token's in review history
    assert reused.exit_code == 2 and "already exists (revoked)" in reused.output
    assert linstudio("tokens", "revoke", "nope").exit_code == 2


def test_disabling_a_user_ends_their_signed_in_session_and_sign_in(served):
    client, cat, render_id = served
    sign_in(client)
    assert review(client, render_id, **{"X-CSRF-Token": csrf_of(client)}).status_code == 201
    assert "Sign out" in client.get("/").text

    disabled = linstudio("users", "disable", "alice")
    assert disabled.exit_code == 0, disabled.output
    # The same session cookie, the very next request: refused, and pages show nobody signed in.
    assert review(client, render_id, "rejected", **{"X-CSRF-Token": csrf_of(client)}).status_code == 401
    assert "Sign out" not in client.get("/").text
    again = client.post("/login", data={"name": "alice", "password": GOOD, "csrf_token": csrf_of(client, "/login")},
                        follow_redirects=False)
    assert again.status_code == 403 and "disabled" in again.text
    assert reviewers(client, render_id) == ["alice"]
    listed = json.loads(linstudio("users", "ls", "--json").output)
    assert [(u["name"], u["disabled_at"] is not None) for u in listed] == [("alice", True)]

    # `users add` with a new password enables them again (and only the new sign-in works).
    assert linstudio("users", "add", "alice", input="another long pw\nanother long pw\n").exit_code == 0
    sign_in(client, password="another long pw")
    assert review(client, render_id, "rejected", **{"X-CSRF-Token": csrf_of(client)}).status_code == 201


def test_removing_a_user_ends_their_session_even_if_the_name_is_given_again(served):
    client, cat, render_id = served
    sign_in(client)
    assert review(client, render_id, **{"X-CSRF-Token": csrf_of(client)}).status_code == 201
    stolen = client.cookies.get("linstudio_session")

    removed = linstudio("users", "remove", "alice")
    assert removed.exit_code == 0, removed.output
    assert review(client, render_id, "rejected", **{"X-CSRF-Token": csrf_of(client)}).status_code == 401
    assert reviewers(client, render_id) == ["alice"]  # review history keeps the name
    assert linstudio("users", "remove", "alice").exit_code == 2

    # Someone new gets the name: the old cookie is not theirs (it was signed for the removed row).
    assert linstudio("users", "add", "alice", input="a new person pw\na new person pw\n").exit_code == 0
    client.cookies.set("linstudio_session", stolen)
    assert review(client, render_id, "rejected", **{"X-CSRF-Token": csrf_of(client)}).status_code == 401
    assert linstudio("users", "ls").output.splitlines()[1].startswith("alice  ")


def test_a_new_password_ends_the_other_sessions(served):
    client, cat, render_id = served
    sign_in(client)
    assert linstudio("users", "add", "alice", input="changed password\nchanged password\n").exit_code == 0
    assert review(client, render_id, **{"X-CSRF-Token": csrf_of(client)}).status_code == 401


def test_a_disabled_user_is_refused_through_the_sso_header_too(served, settings):
    _, cat, render_id = served
    from catalogue.web import create_app

    assert linstudio("users", "disable", "alice").exit_code == 0
    with TestClient(create_app(cat, settings.model_copy(update={"auth_header": "X-Forwarded-User"}))) as client:
        csrf = {"X-CSRF-Token": csrf_of(client)}
        response = review(client, render_id, **csrf, **{"X-Forwarded-User": "alice"})
        assert response.status_code == 403 and "disabled" in response.json()["error"]["message"]
        assert review(client, render_id, **csrf, **{"X-Forwarded-User": "carol"}).status_code == 201  # no row needed
        assert reviewers(client, render_id) == ["carol"]
