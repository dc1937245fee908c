"""Sign-in back-off (catalogue.web.throttle) and sign-in timing, through the real /login form.

The catalogue's clock stands still (ManualClock) so a test waits out a back-off by moving it, not
by sleeping. Each test makes the failure for real: a burst of wrong passwords, then the right one.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from web_support import ManualClock, try_sign_in

from catalogue import Catalogue, auth
from catalogue.web import throttle

GOOD = "correct horse battery"


@pytest.fixture
def clock():
    return ManualClock(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC))


@pytest.fixture
def cat(tmp_path, clock):
    catalogue = Catalogue.open(f"sqlite:///{tmp_path / 'catalogue.db'}", (tmp_path / "store").as_uri(), clock=clock)
    catalogue.migrate()
    with catalogue.transaction() as session:
        auth.add_user(session, "alice", GOOD, clock())
        auth.add_user(session, "bob", GOOD, clock())
    yield catalogue
    catalogue.close()


def gallery(cat, settings, address="10.0.0.1"):
    from catalogue.web import create_app

    return TestClient(create_app(cat, settings), client=(address, 50000), raise_server_exceptions=False)


def test_a_burst_is_refused_with_retry_after_and_the_right_password_works_after_the_wait(cat, clock, settings,
                                                                                        caplog):
    caplog.set_level(logging.INFO, logger="catalogue.web.pages")
    with gallery(cat, settings) as client:
        for _ in range(throttle.ACCOUNT.free):  # the free failures: plain "wrong password"
            assert try_sign_in(client, password="wrong guess").status_code == 401
        burst = [try_sign_in(client, password=p) for p in ("guess 1", "guess 2", GOOD)]
        assert [r.status_code for r in burst] == [429, 429, 429]  # even the right one, inside the wait
        assert burst[0].headers["retry-after"] == "1"
        assert "Too many failed sign-ins for this account: try again in 1 second." in burst[0].text
        assert "linstudio_session" not in client.cookies
        assert any("refused for 1 s" in r.message and "'alice'" in r.message for r in caplog.records)

        # Each further failure doubles the wait: 2, 4, 8 s.
        waits = []
        for _ in range(3):
            clock.advance(int(burst[0].headers["retry-after"]) if not waits else waits[-1])
            assert try_sign_in(client, password="wrong again").status_code == 401
            refused = try_sign_in(client, password=GOOD)
            assert refused.status_code == 429
            waits.append(int(refused.headers["retry-after"]))
        assert waits == [2, 4, 8]

        clock.advance(8)  # waited it out: the right password works, and the count starts again
        assert try_sign_in(client, password=GOOD).status_code == 303
        assert "linstudio_session" in client.cookies
        assert try_sign_in(client, password="typo").status_code == 401


def test_the_wait_is_per_account_and_per_address_and_unknown_names_count_alike(cat, clock, settings):
    with gallery(cat, settings, "10.0.0.1") as first, gallery(cat, settings, "10.0.0.2") as second:
        for _ in range(throttle.ACCOUNT.free):
            assert try_sign_in(first, "alice", "wrong guess").status_code == 401
        # The account waits whichever machine asks; other accounts do not.
        assert try_sign_in(second, "alice", GOOD).status_code == 429
        assert try_sign_in(second, "bob", GOOD).status_code == 303
        # An unknown name backs off exactly like a real one: the back-off does not reveal who exists.
        for _ in range(throttle.ACCOUNT.free):
            assert try_sign_in(second, "nobody", "wrong guess").status_code == 401
        assert try_sign_in(second, "nobody", "wrong guess").status_code == 429

    with gallery(cat, settings, "10.0.0.3") as sprayer, gallery(cat, settings, "10.0.0.4") as colleague:
        # One address trying many names (a password spray) is slowed once it has used its free failures.
        for n in range(throttle.ADDRESS.free):
            assert try_sign_in(sprayer, f"user{n}", "Winter2030!").status_code == 401
        sprayed = try_sign_in(sprayer, "bob", GOOD)
        assert sprayed.status_code == 429 and "from this address" in sprayed.text
        assert try_sign_in(colleague, "bob", GOOD).status_code == 303  # other machines are not


def test_the_count_is_shared_by_every_gallery_process(tmp_path, cat, clock, settings):
    """Two gallery processes (two engines on one database) see one count: no extra guesses per process."""
    other = Catalogue.open(f"sqlite:///{tmp_path / 'catalogue.db'}", (tmp_path / "store").as_uri(), clock=clock)
    try:
        with gallery(cat, settings) as one, gallery(other, settings) as two:
            for n in range(throttle.ACCOUNT.free):
                assert try_sign_in(one if n % 2 else two, "alice", "wrong guess").status_code == 401
            assert try_sign_in(one, "alice", GOOD).status_code == 429
            assert try_sign_in(two, "alice", GOOD).status_code == 429
    finally:
        other.close()


def test_an_attempt_is_charged_before_its_password_is_checked(cat, clock):
    """Concurrent attempts cannot all pass the check before the first failure is written: each is
    counted when it is let in, and given back only when it succeeds."""
    with cat.transaction() as session:
        for _ in range(throttle.ACCOUNT.free):  # five in flight at once, none finished
            assert throttle.charge(session, "alice", "10.0.0.9", clock()).allowed
        assert not throttle.charge(session, "alice", "10.0.0.9", clock()).allowed
        throttle.succeeded(session, "alice", "10.0.0.9")  # one of them had the right password
        assert throttle.charge(session, "alice", "10.0.0.9", clock()).allowed


def test_a_quiet_hour_forgets_failures(cat, clock, settings):
    with gallery(cat, settings) as client:
        for _ in range(throttle.ACCOUNT.free + 3):
            clock.advance(60)
            try_sign_in(client, password="wrong guess")
        clock.advance(throttle.FORGET_AFTER.total_seconds() + 60)
        # Counting from 0 again: the free failures are free again (without forgetting, the 2nd would wait).
        assert [try_sign_in(client, password="wrong guess").status_code
                for _ in range(throttle.ACCOUNT.free)] == [401] * throttle.ACCOUNT.free


def test_unknown_and_known_names_run_the_same_key_derivation(cat, settings, monkeypatch):
    """Sign-in timing cannot tell whether a user exists: an unknown name runs scrypt once with the same
    parameters as a real user's wrong password (compared by the KDF calls made, not by timing)."""
    calls = []
    real = hashlib.scrypt

    def recording(password, *, salt, n, r, p, dklen, **rest):
        calls.append((len(salt), n, r, p, dklen))
        return real(password, salt=salt, n=n, r=r, p=p, dklen=dklen, **rest)

    with gallery(cat, settings) as client:
        monkeypatch.setattr(hashlib, "scrypt", recording)
        runs = {}
        for name in ("alice", "nobody-here"):
            calls.clear()
            assert try_sign_in(client, name, "not the password").status_code == 401
            runs[name] = list(calls)
    assert runs["alice"] == runs["nobody-here"] == [(16, auth.SCRYPT_N, auth.SCRYPT_R, auth.SCRYPT_P, 32)]
