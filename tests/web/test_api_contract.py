"""The OpenAPI says what the server does, and a fuzzer agrees (issue 28).

Schemathesis runs every check and every phase (examples, coverage, fuzzing, stateful) against the
gallery served by uvicorn on a real port, over a catalogue with real renders, jobs (failed and
queued), submissions and a finished export, so generated ids meet real records. Once anonymously
(reads answer, every write is refused), once with an API token (writes happen: deletes,
reviews, re-renders, exports), and once anonymously where reads need a login too
(LINSTUDIO_READ_REQUIRES_LOGIN: the spec then asks a token of every operation, and everything
answers 401; in the deep run only), and with a token again on PostgreSQL and SeaweedFS S3, which
refuse what SQLite lets by. Each run has its own throwaway catalogue.

Bounded for the suite (~35 s on a loaded 2-core machine, most of it the coverage phase's ~550
requests a run): a fixed seed, deterministic generation and a few examples per operation.
`make test-api-deep` (LINSTUDIO_API_DEEP=1) runs the same test far deeper before a release.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import pytest
from contract_run import PHASES, run_contract
from web_support import StepClock, bearer, seed_studio, served_over_http, wait_for_export

from catalogue import Catalogue

pytestmark = pytest.mark.services

DEEP = os.environ.get("LINSTUDIO_API_DEEP") == "1"
SEED = 28
MAX_EXAMPLES = 200 if DEEP else 3
STATEFUL_STEPS = 40 if DEEP else 5
# Deselected from make test (its budget), run by make test-api-deep: deselected, never skipped.
DEEP_ONLY = pytest.mark.api_deep


@pytest.fixture
def studio(request, settings, tmp_path):
    """The gallery served over HTTP on a catalogue with every kind of record its API reads. The test's
    parameter says whether reads need a token and which backend: SQLite and a folder, or PostgreSQL
    and SeaweedFS S3 (which refuse what SQLite lets by, NUL characters in text for one)."""
    import httpx

    from catalogue.auth import create_token
    from catalogue.web import create_app

    reads_closed, backend = request.param
    if backend == "services":
        urls = request.getfixturevalue("fresh_postgres_url"), request.getfixturevalue("fresh_s3_store_url")
    else:
        urls = f"sqlite:///{tmp_path / 'catalogue.db'}", (tmp_path / "store").as_uri()
    web_cat = Catalogue.open(*urls, clock=StepClock(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)))
    web_cat.migrate()
    request.addfinalizer(web_cat.close)
    ids = seed_studio(web_cat)
    with web_cat.transaction() as session:
        token = create_token(session, "contract-bot", web_cat.clock())
    settings = settings.model_copy(update={"read_requires_login": reads_closed})
    with served_over_http(create_app(web_cat, settings)) as (host, port), \
            httpx.Client(base_url=f"http://{host}:{port}") as local:
        started = local.post("/api/export", json={"destination": str(settings.home / "exports"),
                                                  "render_ids": [ids["hero1"]]}, headers=bearer(token))
        assert started.status_code == 202, started.text
        assert wait_for_export(local, started.json()["export_id"], **bearer(token))["state"] == "done"
        yield f"http://{host}:{port}", token, web_cat


CPYTHON_AST_RACE = "AST constructor recursion depth mismatch"


@pytest.mark.parametrize(("studio", "signed_in"), [
    pytest.param((False, "embedded"), False, id="anonymous"),
    pytest.param((False, "embedded"), True, id="token"),
    pytest.param((True, "embedded"), False, id="anonymous-reads-closed", marks=DEEP_ONLY),
    pytest.param((False, "services"), True, id="token-postgres+s3"),
], indirect=["studio"])
def test_schemathesis_finds_nothing(request, studio, signed_in):
    base_url, token, web_cat = studio
    before = reviews_and_renders(web_cat)
    began = time.monotonic()
    report = run_contract(base_url, token=token if signed_in else None, seed=SEED, max_examples=MAX_EXAMPLES,
                          stateful_steps=STATEFUL_STEPS)
    if report.errors and all(CPYTHON_AST_RACE in error for error in report.errors):
        # CPython 3.11's ast constructor can raise this spurious SystemError when two threads build
        # ASTs at once (python/cpython gh-106905, fixed in later releases); the server runs in a thread
        # of this process. Not the API's doing: run again once.
        report = run_contract(base_url, token=token if signed_in else None, seed=SEED, max_examples=MAX_EXAMPLES,
                              stateful_steps=STATEFUL_STEPS)
    elapsed = time.monotonic() - began
    print(f"schemathesis ({request.node.callspec.id}): {report.requests} requests in {elapsed:.1f} s, "
          f"phases {sorted(report.phases_run)}")
    assert not report.errors, "\n".join(report.errors)
    assert not report.failures, f"{len(report.failures)} failures:\n" + "\n".join(report.failures[:30])
    assert set(PHASES) <= report.phases_run, report.phases_run
    assert report.requests > 50
    reviews, renders = reviews_and_renders(web_cat)
    if signed_in:  # the token's writes happened: renders deleted (their reviews with them, in the deep run)
        assert renders < before[1], (before, reviews, renders)
    else:  # and no anonymous one did
        assert (reviews, renders) == before


def reviews_and_renders(cat) -> tuple[int, int]:
    from sqlalchemy import func, select

    from catalogue.models import Render, Review

    with cat.transaction() as session:
        return (session.scalar(select(func.count()).select_from(Review)),
                session.scalar(select(func.count()).select_from(Render)))
