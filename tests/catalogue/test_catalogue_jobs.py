"""Planning and leasing: submissions, asset/job upserts, claims, lease expiry, failures."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from catalogue import InvalidRecordError, UnknownJobError
from catalogue.models import Asset, Job


def _count(cat, model) -> int:
    with cat.transaction() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_plan_upserts_assets_and_jobs_once(cat, plan, make_record):
    records = [make_record("hero", seed=1), make_record("hero", seed=2), make_record("villain", seed=1)]
    plan(*records)
    plan(*records)  # the same manifest run again
    assert _count(cat, Asset) == 2
    assert _count(cat, Job) == 3
    assert cat.job_states(r["key"] for r in records) == {r["key"]: "planned" for r in records}


def test_replanning_keeps_done_jobs_done_and_retries_failed_ones(cat, plan, rendered, make_record):
    render_id, done = rendered(make_record("hero", seed=1))
    failed = make_record("hero", seed=2)
    plan(failed)
    assert cat.claim(failed["key"], "w1", 60)
    cat.fail(failed["key"], "CUDA out of memory")
    assert cat.job(failed["key"])["error"] == "CUDA out of memory"

    plan(done, failed)

    assert cat.job_states([done["key"], failed["key"]]) == {done["key"]: "done", failed["key"]: "planned"}
    assert cat.job(failed["key"])["error"] is None
    assert cat.rendered_keys([done["key"], failed["key"]]) == {done["key"]}
    assert cat.render(render_id)["job_key"] == done["key"]


def test_claim_is_exclusive_until_the_lease_expires(cat, plan, make_record, clock):
    (record,) = plan(make_record())
    key = record["key"]
    assert cat.claim(key, "w1", 60)
    assert cat.job(key)["lease_owner"] == "w1"
    assert not cat.claim(key, "w2", 60)  # leased, unexpired
    clock.advance(59)
    assert not cat.claim(key, "w2", 60)  # still one second left
    clock.advance(2)
    assert cat.claim(key, "w2", 60)  # expired: taken again
    job = cat.job(key)
    assert (job["state"], job["lease_owner"], job["attempts"]) == ("running", "w2", 2)
    assert not cat.claim(key, "w1", 60)  # the first worker lost it


def test_claim_by_the_lease_owner_renews_it(cat, plan, make_record, clock):
    (record,) = plan(make_record())
    assert cat.claim(record["key"], "w1", 60)
    clock.advance(50)
    assert cat.claim(record["key"], "w1", 60)
    clock.advance(50)  # 100 s after the first claim, 50 after the renewal
    assert not cat.claim(record["key"], "w2", 60)


def test_done_jobs_cannot_be_claimed(cat, rendered, clock):
    _, record = rendered()
    clock.advance(10_000)
    assert not cat.claim(record["key"], "w2", 60)
    assert cat.job_states([record["key"]]) == {record["key"]: "done"}


def test_failed_jobs_can_be_claimed_again(cat, plan, make_record):
    (record,) = plan(make_record())
    assert cat.claim(record["key"], "w1", 60)
    cat.fail(record["key"], "boom")
    assert cat.job_states([record["key"]]) == {record["key"]: "failed"}
    assert cat.claim(record["key"], "w2", 60)


def test_fail_leaves_a_done_job_done(cat, rendered):
    _, record = rendered()
    cat.fail(record["key"], "late failure report")
    assert cat.job(record["key"])["state"] == "done"


def test_unknown_job_keys_are_reported_by_name(cat):
    with pytest.raises(UnknownJobError, match="job 'nope' is not planned"):
        cat.claim("nope", "w1", 60)
    with pytest.raises(UnknownJobError, match="nope"):
        cat.fail("nope", "x")
    assert cat.job_states(["nope"]) == {}
    assert cat.rendered_keys(["nope"]) == set()


def test_release_dead_leases_frees_only_that_workers_jobs(cat, plan, make_record):
    mine, theirs = plan(make_record(seed=1), make_record(seed=2))
    assert cat.claim(mine["key"], "host-a", 600)
    assert cat.claim(theirs["key"], "host-b", 600)
    assert cat.release_dead_leases("host-a") == [mine["key"]]
    assert cat.job_states([mine["key"], theirs["key"]]) == {mine["key"]: "planned", theirs["key"]: "running"}


def test_invalid_records_name_the_manifest_line_and_field(cat, make_record):
    submission = cat.create_submission("film", "night-city", "film/night-city.yaml", "0" * 64, 1)
    record = make_record()
    del record["seed"]
    with pytest.raises(InvalidRecordError, match=r"film/night-city.yaml:12 job [0-9a-f]{64}: missing 'seed'"):
        cat.plan_jobs(submission, [record])
    with pytest.raises(InvalidRecordError, match=r"'width' must be int, got str '64'"):
        cat.plan_jobs(submission, [make_record(width="64")])
    assert _count(cat, Job) == 0


def test_a_re_render_must_name_an_existing_parent(cat, rendered, plan, make_record):
    submission = cat.create_submission("film", "night-city", "film/night-city.yaml", "0" * 64, 1)
    with pytest.raises(InvalidRecordError, match="parent_render_id 'missing' is not in the catalogue"):
        cat.plan_jobs(submission, [make_record(seed=9, parent_render_id="missing")])
    parent_id, _ = rendered(make_record(seed=1))
    (child,) = plan(make_record(seed=2, parent_render_id=parent_id))
    assert cat.job_states([child["key"]]) == {child["key"]: "planned"}


def test_plan_needs_an_existing_submission(cat, make_record):
    with pytest.raises(Exception, match="submission 'nope' does not exist"):
        cat.plan_jobs("nope", [make_record()])


# -- a lease's owner, alive or gone (catalogue/jobs.py, catalogue/repair.py release_silent_leases) ----------------


def test_a_renewal_keeps_the_lease_without_counting_an_attempt_and_says_which_leases_are_gone(cat, plan, make_record,
                                                                                             clock):
    mine, taken = plan(make_record(seed=1), make_record(seed=2))
    assert cat.claim(mine["key"], "farm-a/1", 60) and cat.claim(taken["key"], "farm-a/1", 60)
    clock.advance(61)
    assert cat.claim(taken["key"], "farm-b/2", 60)  # farm-a's lease on it expired and farm-b took it
    assert cat.renew_leases([mine["key"], taken["key"]], "farm-a/1", 60) == {mine["key"]}
    job = cat.job(mine["key"])
    assert (job["state"], job["lease_owner"], job["attempts"]) == ("running", "farm-a/1", 1)
    clock.advance(59)  # 120 s after the claim, 59 after the renewal: still farm-a's
    assert not cat.claim(mine["key"], "farm-b/2", 60)
    assert cat.job(taken["key"])["lease_owner"] == "farm-b/2"


def test_a_failure_is_written_only_while_the_run_holds_the_lease(cat, plan, make_record, clock):
    (record,) = plan(make_record())
    assert cat.claim(record["key"], "farm-a/1", 60)
    clock.advance(61)
    assert cat.claim(record["key"], "farm-b/2", 60)
    assert cat.fail_leased(record["key"], "farm-a/1", "late news from a run that lost the job") is False
    assert cat.job(record["key"])["state"] == "running"  # farm-b's render goes on
    assert cat.fail_leased(record["key"], "farm-b/2", "boom") is True
    assert (cat.job(record["key"])["state"], cat.job(record["key"])["error"]) == ("failed", "boom")


def test_silent_leases_are_released_after_their_window_and_a_renewed_one_is_kept(cat, plan, make_record, clock):
    gone, alive, fresh = plan(make_record(seed=1), make_record(seed=2), make_record(seed=3))
    assert cat.claim(gone["key"], "farm-a/1", 900) and cat.claim(alive["key"], "farm-b/2", 900)
    clock.advance(60)  # neither renewed for 60 s (the database was down, say): both look silent
    assert cat.claim(fresh["key"], "farm-c/3", 900)  # renewed just now: not even watched
    slept = []

    def sleep(seconds):  # meanwhile the database answers again and farm-b's heartbeat renews its lease
        slept.append(seconds)
        clock.advance(seconds)
        if len(slept) == 2:
            assert cat.renew_leases([alive["key"]], "farm-b/2", 900) == {alive["key"]}

    actions = cat.release_silent_leases(sleep=sleep)
    assert [(a.kind, a.target) for a in actions] == [("release-silent-lease", f"job {gone['key']}")]
    assert "lease of farm-a/1" in actions[0].detail and "its run is gone" in actions[0].detail
    assert sum(slept) == pytest.approx(30.0)  # the silence window of a 900 s lease
    assert cat.job_states([gone["key"], alive["key"], fresh["key"]]) == {
        gone["key"]: "planned", alive["key"]: "running", fresh["key"]: "running"}


def test_no_lease_is_watched_when_none_looks_silent(cat, plan, make_record, clock):
    (record,) = plan(make_record())
    assert cat.claim(record["key"], "farm-a/1", 900)
    clock.advance(20)  # inside the 30 s window: a live run's lease
    assert cat.release_silent_leases(sleep=pytest.fail) == []
    assert cat.job(record["key"])["state"] == "running"


def test_a_silence_watch_starts_again_when_the_database_stops_answering(cat, plan, make_record, clock, monkeypatch):
    """While the database does not answer, nobody can renew: that time proves nothing about the owner."""
    (record,) = plan(make_record())
    assert cat.claim(record["key"], "farm-a/1", 90)  # a 3 s silence window
    clock.advance(10)
    real, calls = cat.lease_sightings, {"n": 0}

    def flaky(keys=None):
        calls["n"] += 1
        if calls["n"] == 3:  # mid-window
            from sqlalchemy.exc import OperationalError

            raise OperationalError("SELECT", {}, Exception("server closed the connection"))
        return real(keys)

    monkeypatch.setattr(cat, "lease_sightings", flaky)
    slept = []
    actions = cat.release_silent_leases(sleep=lambda s: (slept.append(s), clock.advance(s)))
    assert len(actions) == 1 and sum(slept) == pytest.approx(3.0 + 2.0)  # 2 s watched, then 3 s again


def test_a_release_loses_to_a_renewal_that_came_after_the_lease_was_seen(cat, plan, make_record, clock):
    """The watch's last look and its release are two statements: a heartbeat between them must win."""
    from catalogue import jobs

    (record,) = plan(make_record())
    assert cat.claim(record["key"], "farm-a/1", 900)
    (seen,) = cat.lease_sightings([record["key"]])
    clock.advance(5)
    assert cat.renew_leases([record["key"]], "farm-a/1", 900) == {record["key"]}
    with cat.transaction() as session:
        assert not jobs.release_unrenewed(session, seen, clock())
    assert cat.job(record["key"])["lease_owner"] == "farm-a/1"
    (now_seen,) = cat.lease_sightings([record["key"]])
    with cat.transaction() as session:
        assert jobs.release_unrenewed(session, now_seen, clock())
    assert cat.job(record["key"])["state"] == "planned"
