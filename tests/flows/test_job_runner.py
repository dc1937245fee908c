"""The job retry policy (flows/job_runner.py) as units: a stand-in catalogue and renderer, no Prefect.

The real outages (a store or database down for seconds, then for longer than the retry budget)
are in tests/faults/test_faults_services.py; these pin the policy itself: transient failures are
attempted again after the declared delays, anything else fails at once, and every job ends with
one outcome and, when it failed, a reason in the catalogue.
"""

from __future__ import annotations

import pytest

from flows.devices import SlotPool
from flows.job_runner import JOB_RETRIES, JOB_RETRY_DELAYS, RunContext, run_job
from flows.outcomes import RUNNING_ELSEWHERE

RECORD = {"key": "k" * 64, "team": "game", "project": "p", "asset_id": "crate", "width": 64, "height": 64,
          "seed": 7, "model": "tiny-sd15"}


class StandInCatalogue:
    """Claims always succeed; ingest returns a render id; failures are recorded."""

    def __init__(self) -> None:
        self.claims, self.failed, self.ingested = 0, {}, []

    def claim(self, key, worker, lease_seconds) -> bool:
        self.claims += 1
        return True

    def rendered_keys(self, keys):
        return set()

    def ingest(self, key, png, record, worker, made_by=None) -> str:
        self.ingested.append(key)
        return "render-1"

    def fail_leased(self, key, worker, reason) -> bool:
        self.failed[key] = reason
        return True

    def job(self, key):
        return {"state": "running", "lease_owner": "farm-b/77", "lease_expires_at": "2026-01-01T00:15:00+00:00"}


def context(catalogue, renderer) -> RunContext:
    return RunContext(catalogue=catalogue, slots=SlotPool([None]), worker="host/1", lease_seconds=60,
                      renderer=renderer)


def renderer_failing(times: int, error: Exception):
    calls = {"n": 0}

    def render(record, device, dtype, source_image=None):
        calls["n"] += 1
        if calls["n"] <= times:
            raise error
        return b"png", {"engine": "stand-in"}

    render.calls = calls
    return render


def test_a_transient_failure_is_attempted_again_after_the_declared_delay():
    catalogue, slept = StandInCatalogue(), []
    render = renderer_failing(1, ConnectionError("render host went away"))
    outcome = run_job(context(catalogue, render), RECORD, sleep=slept.append)
    assert outcome.status == "rendered" and outcome.render_id == "render-1"
    assert slept == [JOB_RETRY_DELAYS[0]] and render.calls["n"] == 2 and catalogue.claims == 2
    assert catalogue.failed == {}


def test_a_job_that_keeps_failing_transiently_gives_up_with_its_reason_in_the_catalogue():
    catalogue, slept = StandInCatalogue(), []
    render = renderer_failing(99, ConnectionError("object store unreachable"))
    outcome = run_job(context(catalogue, render), RECORD, sleep=slept.append)
    assert outcome.status == "failed"
    assert outcome.reason == "gave up after retries: ConnectionError: object store unreachable"
    assert catalogue.failed == {RECORD["key"]: outcome.reason}
    assert render.calls["n"] == JOB_RETRIES + 1 and slept == JOB_RETRY_DELAYS[:JOB_RETRIES]


def test_a_failure_that_is_not_transient_fails_at_once():
    catalogue, slept = StandInCatalogue(), []
    render = renderer_failing(99, ValueError("the engine refused this job"))
    outcome = run_job(context(catalogue, render), RECORD, sleep=slept.append)
    assert outcome.status == "failed" and outcome.reason == "ValueError: the engine refused this job"
    assert render.calls["n"] == 1 and slept == [] and catalogue.failed == {RECORD["key"]: outcome.reason}


def test_a_claim_that_fails_transiently_is_attempted_again():
    class BlinkingClaims(StandInCatalogue):
        def claim(self, key, worker, lease_seconds) -> bool:
            self.claims += 1
            if self.claims == 1:
                raise TimeoutError("database did not answer")
            return True

    catalogue, slept = BlinkingClaims(), []
    outcome = run_job(context(catalogue, renderer_failing(0, None)), RECORD, sleep=slept.append)
    assert outcome.status == "rendered" and catalogue.claims == 2 and slept == [JOB_RETRY_DELAYS[0]]


def test_a_job_leased_by_another_worker_is_running_elsewhere_naming_who_holds_it():
    class Leased(StandInCatalogue):
        def claim(self, key, worker, lease_seconds) -> bool:
            return False

    outcome = run_job(context(Leased(), renderer_failing(0, None)), RECORD, sleep=pytest.fail)
    assert outcome.status == RUNNING_ELSEWHERE
    assert outcome.reason == "leased by farm-b/77 until 2026-01-01T00:15:00+00:00"


def test_the_failure_is_still_returned_when_the_catalogue_cannot_record_it():
    class Unrecordable(StandInCatalogue):
        def fail_leased(self, key, worker, reason) -> bool:
            raise ConnectionError("database down")

    render = renderer_failing(99, ConnectionError("database down"))
    outcome = run_job(context(Unrecordable(), render), RECORD, sleep=lambda _s: None)
    assert outcome.status == "failed" and outcome.reason.startswith("gave up after retries")
    assert outcome.recorded is False
    assert render.calls["n"] == JOB_RETRIES + 1


def test_a_failure_the_catalogue_cannot_take_is_not_rendered_again():
    """A bad job whose failure cannot be written (the database is down at that moment) is one attempt, not
    three: the failure is kept for the run's keeper to write, the render is never repeated for it."""
    class Unrecordable(StandInCatalogue):
        def fail_leased(self, key, worker, reason) -> bool:
            raise ConnectionError("database down")

        def fail(self, key, reason) -> None:
            raise ConnectionError("database down")

    render, slept = renderer_failing(99, ValueError("the engine refused this job")), []
    outcome = run_job(context(Unrecordable(), render), RECORD, sleep=slept.append)
    assert render.calls["n"] == 1 and slept == []
    assert outcome.status == "failed" and outcome.reason == "ValueError: the engine refused this job"
    assert outcome.recorded is False


class RecordingKeeper:
    """The lease keeper's side of a job: which leases it is asked to keep renewing."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.failures: dict[str, str] = {}

    def hold(self, key: str) -> None:
        self.held.add(key)

    def let_go(self, key: str) -> None:
        self.held.discard(key)

    def record_failure(self, key: str, reason: str) -> bool:
        self.failures[key] = reason
        return True


@pytest.mark.parametrize("fails", [0, 99], ids=["rendered", "failed"])
def test_every_job_lets_go_of_its_lease_when_it_ends(fails):
    """A lease left held is renewed for as long as the run lives, so the job would look taken to
    every other run; rendered or failed, the runner lets go of it."""
    keeper = RecordingKeeper()
    ctx = context(StandInCatalogue(), renderer_failing(fails, ValueError("bad input")))
    ctx.keeper = keeper
    outcome = run_job(ctx, RECORD, sleep=lambda _: None)
    assert outcome.status == ("rendered" if fails == 0 else "failed")
    assert keeper.held == set()
    assert keeper.failures == ({} if fails == 0 else {RECORD["key"]: outcome.reason})
