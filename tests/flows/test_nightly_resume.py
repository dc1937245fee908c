"""A nightly run that dies after taking submissions (killed, or the database gone when it records
the outcome) leaves them `running`; the next nightly run takes them up again and finishes them.

Runs the nightly logic in this process against the session's Prefect server, rendering here
instead of dispatching shards (another test may have registered the shard deployments on that
server, with no workers left to take them); the dispatch is tests/flows/test_distributed.py's.
"""

from __future__ import annotations

import pytest

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
    catalogue, inbox = Catalogue.from_settings(), Inbox.from_settings()
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
