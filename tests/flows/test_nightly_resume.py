"""A nightly run that dies after taking submissions (killed, or the database gone when it records
the outcome) leaves them `running`; the next nightly run takes them up again and finishes them.

Runs the nightly logic in this process against the session's Prefect server, rendering here
instead of dispatching shards (another test may have registered the shard deployments on that
server, with no workers left to take them); the dispatch is tests/flows/test_distributed.py's.
"""

from __future__ import annotations

import pytest
from linstudio.settings import get_settings

pytestmark = pytest.mark.services


def statuses(catalogue) -> dict[str, str]:
    return {row["submission_id"]: row["status"] for row in catalogue.submissions(limit=100)}


def test_submissions_left_running_by_a_dead_nightly_run_are_finished_by_the_next(prefect_api, backend, small_manifest,
                                                                                 monkeypatch):
    from flow_support import SMALL_MANIFEST, write_manifest

    from catalogue import Catalogue
    from flows.inbox import Inbox
    from flows.nightly import run_nightly
    from linstudio.commands.production import submit

    monkeypatch.setattr("flows.nightly.shard_deployments_available", lambda: False)
    other = write_manifest(small_manifest.parent, "other.yaml", SMALL_MANIFEST.replace("test-props", "other-props"))
    submit([small_manifest], as_json=False)  # taken by the run that dies
    submit([other], as_json=False)  # still queued when the next run starts
    catalogue, inbox = Catalogue.from_settings(get_settings()), Inbox.from_settings(get_settings())
    try:
        abandoned, waiting = sorted(statuses(catalogue))
        # The dead run got as far as taking the first submission (queued -> running, ticket taken).
        assert catalogue.start_submission(abandoned) and inbox.take(abandoned) is not None
        # A `linstudio run` in progress also has a running submission, but no ticket: not the nightly's.
        local_run = catalogue.create_submission("game", "test-props", str(small_manifest), "0" * 64, 3)

        outcomes = run_nightly()

        assert outcomes == {abandoned: "done", waiting: "done"}
        assert statuses(catalogue) == {abandoned: "done", waiting: "done", local_run: "running"}
        for submission_id in (abandoned, waiting):
            keys = catalogue.submission_job_keys(submission_id)
            assert len(keys) == 3 and set(catalogue.job_states(keys).values()) == {"done"}
        assert run_nightly() == {}  # nothing left running or queued: the next run takes nothing
    finally:
        catalogue.close()


def test_a_submission_left_running_after_its_jobs_ended_is_settled_not_rendered_again(backend, small_manifest,
                                                                                      monkeypatch):
    """The nightly run that had it rendered every job (one failed) and lost the database as it recorded the
    outcome: the next one settles it from the catalogue — failed, with the job's reason — and renders nothing."""
    import io

    from PIL import Image

    from catalogue import Catalogue
    from flows.batch import load_and_expand, plan_run
    from flows.inbox import Inbox
    from flows.nightly import run_nightly
    from linstudio.commands.production import submit

    monkeypatch.setattr("flows.nightly.shard_deployments_available", lambda: False)
    monkeypatch.setattr("flows.flow.render_batch", lambda *a, **k: pytest.fail("nothing is left to render"))
    submit([small_manifest], as_json=False)
    catalogue, inbox = Catalogue.from_settings(get_settings()), Inbox.from_settings(get_settings())
    try:
        (submission_id,) = statuses(catalogue)
        assert catalogue.start_submission(submission_id) and inbox.take(submission_id) is not None
        planned = plan_run(catalogue, load_and_expand([small_manifest], get_settings()), force=False,
                           submission_ids=[submission_id])
        first, second, third = planned.to_render
        png = io.BytesIO()
        Image.new("RGB", (64, 64), (9, 9, 9)).save(png, format="PNG")
        for record in (first, second):
            assert catalogue.claim(record["key"], "night/1", 600)
            catalogue.ingest(record["key"], png.getvalue(), record, "night/1")
        assert catalogue.claim(third["key"], "night/1", 600)
        assert catalogue.fail_leased(third["key"], "night/1", "ValueError: the engine refused this job")

        assert run_nightly() == {submission_id: "failed"}
        (row,) = catalogue.submissions()
        assert row["status"] == "failed" and row["error"].startswith(
            "1 job(s) failed: ValueError: the engine refused this job (settled from the catalogue"), row
        assert len(catalogue.renders()) == 2 and catalogue.job(third["key"])["state"] == "failed"
    finally:
        catalogue.close()
