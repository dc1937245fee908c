"""A client generated from the served OpenAPI by a third-party generator works (issue 28).

`openapi-python-client` turns the spec the gallery serves into a typed package at test time; the
test then does what a pipeline TD's script does, through that package only: list renders with
filters, post a review with a token, start an export and poll it to done, request a re-render,
list and pause a schedule, and read a typed error. A spec the generator cannot turn into a working client fails here.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from web_support import seed_studio, served_over_http

pytestmark = pytest.mark.services

PACKAGE = "lin_fusion_studio_catalogue_client"  # the generator's name for it, from the spec's title (README)
GENERATOR_CONFIG = "post_hooks: []\n"  # no ruff run after generating


@pytest.fixture
def generated(web_cat, settings, tmp_path, monkeypatch):
    """(the generated package, base URL, token, seeded ids) for the gallery served over HTTP."""
    import httpx

    from catalogue.auth import create_token
    from catalogue.web import create_app

    ids = seed_studio(web_cat)
    with web_cat.transaction() as session:
        token = create_token(session, "pipeline-bot", web_cat.clock())
    with served_over_http(create_app(web_cat, settings)) as (host, port):
        base_url = f"http://{host}:{port}"
        spec = tmp_path / "openapi.json"
        spec.write_bytes(httpx.get(f"{base_url}/openapi.json").content)
        (tmp_path / "generator.yaml").write_text(GENERATOR_CONFIG)
        generator = Path(sys.executable).with_name("openapi-python-client")
        made = subprocess.run([str(generator), "generate", "--path", str(spec), "--meta", "none",
                               "--config", str(tmp_path / "generator.yaml"), "--output-path",
                               str(tmp_path / "client" / PACKAGE)], capture_output=True, text=True, timeout=120)
        assert made.returncode == 0 and "Warning" not in made.stdout + made.stderr, made.stdout + made.stderr
        monkeypatch.syspath_prepend(str(tmp_path / "client"))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            monkeypatch.delitem(sys.modules, name)
        yield importlib.import_module(PACKAGE), base_url, token, ids


def test_a_generated_client_lists_reviews_exports_rerenders_and_reads_errors(generated, settings):
    package, base_url, token, ids = generated
    from lin_fusion_studio_catalogue_client import AuthenticatedClient, Client
    from lin_fusion_studio_catalogue_client.api.catalogue import (get_export, get_render, list_renders,
                                                                  list_schedules, pause_schedule, post_export,
                                                                  post_rerender, post_review)
    from lin_fusion_studio_catalogue_client.models import (ErrorBody, ErrorDetailCode, ExportOfRenders, ExportQueued,
                                                           ExportState, RenderPage, RerenderIn, RerenderQueued,
                                                           Review, ReviewFilter, ReviewIn, ReviewInStatus, Schedule,
                                                           SchedulePage)

    assert package.__name__ == PACKAGE
    anonymous = Client(base_url=base_url)
    bot = AuthenticatedClient(base_url=base_url, token=token)

    # List with filters, and follow the cursor to the next page.
    first = list_renders.sync(client=anonymous, team="film", size="64x64", status=ReviewFilter.UNREVIEWED, limit=2)
    assert isinstance(first, RenderPage) and len(first.items) == 2 and first.next_  # `next` is a builtin
    assert all(r.team == "film" and (r.width, r.height) == (64, 64) for r in first.items)
    second = list_renders.sync(client=anonymous, team="film", size="64x64", status=ReviewFilter.UNREVIEWED, limit=2,
                               cursor=first.next_)
    assert {r.render_id for r in second.items}.isdisjoint(r.render_id for r in first.items)

    # README's API lines, as written there.
    from lin_fusion_studio_catalogue_client import models
    studio = bot
    page = list_renders.sync(client=studio, project="night-city", status=models.ReviewFilter.UNREVIEWED)
    post_review.sync(client=studio, render_id=page.items[0].render_id,
                     body=models.ReviewIn(status=models.ReviewInStatus.APPROVED))
    approved = list_renders.sync(client=studio, status=ReviewFilter.APPROVED).items
    assert page.items[0].render_id in {render.render_id for render in approved}

    # A review with the token.
    review = post_review.sync(client=bot, render_id=ids["hero1"],
                              body=ReviewIn(status=ReviewInStatus.APPROVED, note="ship it"))
    assert isinstance(review, Review) and review.reviewer == "token:pipeline-bot" and review.status == "approved"

    # An export, polled until done.
    target = settings.home / "exports" / "from-client"
    queued = post_export.sync(client=bot, body=ExportOfRenders(destination=str(target),
                                                              render_ids=[ids["hero1"], ids["hero2"]]))
    assert isinstance(queued, ExportQueued) and not queued.joined, queued
    deadline = time.monotonic() + 60
    while (export := get_export.sync(client=bot, export_id=queued.export_id)).state not in (ExportState.DONE,
                                                                                          ExportState.FAILED):
        assert time.monotonic() < deadline, export
        time.sleep(0.1)
    assert export.state == ExportState.DONE and len(export.written) == 2 and len(list(target.rglob("*.png"))) == 2

    # A re-render.
    rerender = post_rerender.sync(client=bot, render_id=ids["hero1"], body=RerenderIn(sizes=["128x128", [256, 128]]))
    assert isinstance(rerender, RerenderQueued) and len(rerender.job_keys) == 2

    # Schedules: listed, and paused (202: the dispatcher beside the gallery tells Prefect).
    listed = list_schedules.sync(client=anonymous)
    assert isinstance(listed, SchedulePage) and [s.name for s in listed.items] == [ids["schedule"]]
    paused = pause_schedule.sync(client=bot, name=ids["schedule"])
    assert isinstance(paused, Schedule) and not paused.active and paused.sync_pending

    # Typed errors: an unknown render, an unknown schedule, and an anonymous write.
    unknown = pause_schedule.sync(client=bot, name="no-such-schedule")
    assert isinstance(unknown, ErrorBody) and unknown.error.code == ErrorDetailCode.NOT_FOUND
    missing = get_render.sync(client=anonymous, render_id="01ZZZZZZZZZZZZZZZZZZZZZZZZ")
    assert isinstance(missing, ErrorBody) and missing.error.code == ErrorDetailCode.NOT_FOUND
    assert "not in the catalogue" in missing.error.message
    refused = post_review.sync(client=anonymous, render_id=ids["hero1"], body=ReviewIn(status=ReviewInStatus.REJECTED))
    assert isinstance(refused, ErrorBody) and refused.error.code == ErrorDetailCode.UNAUTHORIZED
