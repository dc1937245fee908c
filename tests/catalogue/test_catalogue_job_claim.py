"""The job-claim rule read for a fetched job (`catalogue.jobs.claimable`) decides as `Catalogue.claim` does.

flows/waiting.py and flows/shards.py watch jobs other runs hold and ask this rule before they take
them back; were it to drift from the claim's SQL, a run would wait on a job it could take, or send
out again a job nobody can claim.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from catalogue.jobs import JobState, claimable
from catalogue.models import JOB_STATES

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_the_states_are_the_stored_strings():
    assert tuple(JobState) == JOB_STATES
    assert JobState("running") is JobState.RUNNING and JobState.DONE == "done"


def test_the_rule_on_its_own():
    def job(state, expires=None):
        return {"state": state, "lease_expires_at": expires}

    assert claimable(job("planned"), NOW) and claimable(job("failed"), NOW)
    assert not claimable(job("done"), NOW) and not claimable(None, NOW)
    assert not claimable(job("running"), NOW)  # no lease recorded: nothing to expire
    assert not claimable(job("running", (NOW + timedelta(seconds=1)).isoformat()), NOW)
    assert claimable(job("running", (NOW - timedelta(seconds=1)).isoformat()), NOW)
    assert claimable(job("running", (NOW - timedelta(seconds=1)).replace(tzinfo=None).isoformat()), NOW)  # stored UTC
    assert claimable(job("running", NOW - timedelta(seconds=1)), NOW)  # a datetime, not only its text


def test_the_rule_agrees_with_the_claim(cat, plan, make_record, rendered, clock):
    (record,) = plan(make_record(seed=7))
    key = record["key"]
    assert claimable(cat.jobs([key])[key], clock())
    assert cat.claim(key, "w1", 60)
    clock.advance(30)
    assert not claimable(cat.jobs([key])[key], clock()) and not cat.claim(key, "w2", 60)
    clock.advance(31)
    assert claimable(cat.jobs([key])[key], clock()) and cat.claim(key, "w2", 60)
    cat.fail(key, "boom")
    assert claimable(cat.jobs([key])[key], clock()) and cat.claim(key, "w3", 60)
    _, done = rendered(make_record(seed=8))
    clock.advance(10_000)
    assert not claimable(cat.jobs([done["key"]])[done["key"]], clock()) and not cat.claim(done["key"], "w4", 60)
