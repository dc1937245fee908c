"""Waiting on dispatched shards (flows/shards.py) as units: a stand-in catalogue and flow-run states."""

from __future__ import annotations

import logging

import pytest

from flows import shards
from flows.shards import DispatchedShard, wait_for_shards


class JobsFinishAfter:
    """A catalogue whose jobs are `planned` for the first `polls` reads, then `done`."""

    def __init__(self, polls: int) -> None:
        self.polls = polls

    def job_states(self, keys):
        self.polls -= 1
        return {key: "done" if self.polls < 0 else "planned" for key in keys}


@pytest.mark.parametrize("started", [False, True])
def test_a_shard_no_worker_starts_is_logged_once_and_still_awaited(monkeypatch, caplog, started):
    monkeypatch.setattr(shards, "_flow_run_progress", lambda _id: (False, "now" if started else None))
    monkeypatch.setattr(shards, "cancel_if_waiting", lambda _id: False)
    shard = DispatchedShard(keys=["a", "b"], flow_run_id="run-1")
    with caplog.at_level(logging.WARNING, logger="flows.shards"):
        wait_for_shards(JobsFinishAfter(polls=8), [shard], lease_seconds=600, poll_seconds=0.01,
                        flow_run_check_seconds=0, no_worker_warning_seconds=0.02)
    warnings = [r.getMessage() for r in caplog.records if "no worker has started it" in r.getMessage()]
    if started:
        assert warnings == []
    else:
        assert len(warnings) == 1 and "a shard of 2 job(s)" in warnings[0] and "linstudio worker --pool" in warnings[0]
