"""The object store or the database taken away mid-batch: nothing is lost, and a re-run finishes the rest.

Each test starts a real `linstudio run` of a batch of tiny jobs against the fault suite's own
PostgreSQL and SeaweedFS (tests/faults/conftest.py), stops one of them once a few jobs are
catalogued, brings the same one back on the same port and data, and then checks what a studio
would: every job catalogued exactly once after at most one re-run, and `linstudio catalogue check`
clean. Two outages per service: one shorter than the retry budget (flows/job_runner.py: ingest
attempts with backoff, then whole-job attempts), which the run itself must ride out, and one
longer, after which the affected jobs must have failed with a reason naming what was down.

Figures go to `fault_log` for docs/reliability.md: jobs in flight when the fault hit (of the batch,
not yet catalogued), lost (the goal: 0), and time to recover (from the service's return to the
batch or its re-run finishing).

The last tests take the same services away under single catalogue and store calls: every error
an outage raises must be one the flow retries, and the first call after it must succeed.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from fault_support import Started, job_records, plan, png_with_short_pixel_data, wait_until, write_manifest
from sqlalchemy import text

from catalogue import Catalogue
from catalogue.store import open_store
from flows.job_runner import job_label
from flows.transient import is_transient

# Services stopped and restarted for real (~5 min): `make test-faults` runs these, `make test` does not.
pytestmark = [pytest.mark.services, pytest.mark.faults_slow]

JOBS = 16
MANIFEST = f"""
version: 1
team: game
project: faults
defaults: {{model: tiny-sd15, steps: 2, guidance: 5.0, scheduler: euler, sizes: [64x64]}}
assets:
  - id: crate
    prompt: "a wooden crate"
    variants: {JOBS}
"""
SHORT_OUTAGE_S = 5.0  # well inside one job's retry budget
HANG_GUARD_S = 300.0
KILLPOINT = Path(__file__).with_name("killpoint.py")
HELD_RENDER = 4  # the render held until the database is down (after three jobs are catalogued)
DEAD_RUN_LEASE_S = "120"  # the killed run's lease: a 4 s silence window (catalogue/jobs.py silence_seconds)


def write_batch_manifest(folder: Path) -> Path:
    path = folder / "faults.yaml"
    path.write_text(textwrap.dedent(MANIFEST).lstrip())
    return path


def start_batch(studio, tmp_path: Path, catalogued_first: int = 3, launcher: tuple[str, ...] = (), **env: str):
    """Start the batch and wait until `catalogued_first` jobs are catalogued; returns the run, the manifest,
    and the jobs in flight then (planned or running: not yet catalogued)."""
    manifest = write_batch_manifest(tmp_path)
    run = studio.start("run", str(manifest), launcher=launcher, **env)
    wait_until(lambda: len(studio.catalogued()) >= catalogued_first, f"{catalogued_first} catalogued jobs", run)
    in_flight = JOBS - len(studio.catalogued())
    assert in_flight > 0, "the batch finished before the fault; make it longer"
    return run, manifest, in_flight


@dataclass
class Outage:
    """What one outage mid-batch did to the run that lived through it."""

    manifest: Path
    in_flight: int  # jobs of the batch not yet catalogued when the service went down
    outage_seconds: float  # from the service stopped to it answering again
    returncode: int
    output: str
    back_to_end_seconds: float  # from the service answering again to the run's end
    leftovers: dict  # `check` between the run and its re-run (see Studio.check_leftovers)

    def failed_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.lstrip().startswith("FAILED ")]


def outage_mid_batch(studio, tmp_path: Path, service, stay_down: Callable[[Started, dict], None],
                     hold_renders: bool = False) -> Outage:
    """Run the batch, stop `service` once a few jobs are catalogued, keep it down while `stay_down(run,
    leased)` waits, start the same one again, and let the run finish.

    With `hold_renders`, the batch's renders are held (tests/faults/killpoint.py `--stall`) from the one
    after those catalogued until the service is down, so `leased` — {key: job} of the jobs the run holds
    as the service goes — is exact: none of them can finish first. Without it `leased` is empty.
    """
    leased: dict = {}
    if hold_renders:
        stall = tmp_path / "stall"
        stall.mkdir()
        launcher = (str(KILLPOINT), "--at", "render", "--nth", str(HELD_RENDER), "--stall", str(stall))
        run, manifest, in_flight = start_batch(studio, tmp_path, catalogued_first=HELD_RENDER - 1, launcher=launcher)
        wait_until(lambda: (stall / f"reached-{HELD_RENDER}").exists(), "the held render", run)
        keys = studio.catalogue.submission_job_keys(studio.catalogue.submissions()[0]["submission_id"])
        leased = {key: job for key, job in studio.catalogue.jobs(keys).items() if job["state"] == "running"}
    else:
        run, manifest, in_flight = start_batch(studio, tmp_path)
    service.stop()
    down = time.monotonic()
    if hold_renders:
        for call in range(HELD_RENDER, HELD_RENDER + 20 * JOBS):  # every render from here on goes ahead
            (stall / f"go-{call}").touch()
    stay_down(run, leased)
    service.start()
    back = time.monotonic()
    returncode = run.wait(timeout=HANG_GUARD_S * 2)
    ended = time.monotonic()
    return Outage(manifest, in_flight, back - down, returncode, run.output(), ended - back,
                  studio.check_leftovers())


def a_short_while(run: Started, leased: dict) -> None:
    time.sleep(SHORT_OUTAGE_S)


def record(fault_log, fault: str, outage: Outage, after, recovery: float, outcome: str) -> None:
    intents = len(outage.leftovers["unfinished_intents"])
    # A run that lives through an outage sweeps its failed attempts' intents before it exits.
    assert intents == 0 and not outage.leftovers["orphan_objects"], outage.leftovers
    fault_log.record(fault, jobs_in_flight=outage.in_flight, lost=after.lost, recovery_seconds=round(recovery, 1),
                     outcome=f"{outcome}; re-run rendered {after.counts['rendered']}",
                     backend="postgres+s3", outage_seconds=round(outage.outage_seconds, 1),
                     left_for_the_next_run=f"{intents} upload intent(s), "
                                           f"{len(outage.leftovers['orphan_objects'])} orphan object(s)")


# -- the object store ------------------------------------------------------------------------------------


def test_faults_store_down_shorter_than_retries_is_ridden_out(studio, fault_seaweed, fault_log, tmp_path):
    outage = outage_mid_batch(studio, tmp_path, fault_seaweed, a_short_while)
    after = studio.rerun(outage.manifest, JOBS)
    record(fault_log, "object store (SeaweedFS) down mid-batch, within the retry budget", outage, after,
           recovery=outage.back_to_end_seconds,
           outcome="every job catalogued by the same run" if outage.returncode == 0 else f"run exit {outage.returncode}")
    assert outage.returncode == 0, outage.output[-3000:]  # the outage fits the retry budget: the run succeeds
    assert "Traceback" not in outage.output, outage.output[-3000:]  # logged in lines, not tracebacks
    assert after.counts["rendered"] == 0, after.output[-3000:]
    after.assert_nothing_lost()


def test_faults_store_down_longer_than_retries_fails_jobs_clearly_and_a_rerun_completes(
        studio, fault_seaweed, fault_log, tmp_path):
    def until_a_job_gave_up(run: Started, leased: dict) -> None:  # its whole retry budget spent, recorded failed
        wait_until(lambda: studio.job_states()["failed"] > 0, "job failed while the store was down", run)

    outage = outage_mid_batch(studio, tmp_path, fault_seaweed, until_a_job_gave_up)
    errors = studio.job_errors()
    after = studio.rerun(outage.manifest, JOBS)
    record(fault_log, "object store (SeaweedFS) down mid-batch, longer than the retry budget", outage, after,
           recovery=outage.back_to_end_seconds + after.seconds,
           outcome=f"{len(errors)} job(s) failed naming the store, the others retried and succeeded")
    assert outage.returncode == 1, outage.output[-3000:]  # failed jobs make the run's exit status say so
    assert errors, "no job was recorded failed"
    for reason in errors.values():  # the reason names what was down: the store's endpoint and bucket
        assert "Could not connect to the endpoint URL" in reason, reason
        assert fault_seaweed.endpoint.endpoint_url in reason and studio.store_url.split("/")[2] in reason, reason
    assert len(outage.failed_lines()) == len(errors), outage.output[-3000:]
    assert after.counts["rendered"] == len(errors), after.output[-3000:]
    after.assert_nothing_lost()


# -- the database ------------------------------------------------------------------------------------------


def test_faults_database_restart_within_retries_is_ridden_out(studio, fault_postgres, fault_log, tmp_path):
    # `pg_ctl stop -m fast`: every client connection is cut, as in a failover or a minor upgrade.
    outage = outage_mid_batch(studio, tmp_path, fault_postgres, a_short_while)
    after = studio.rerun(outage.manifest, JOBS)
    record(fault_log, "database (PostgreSQL) restarted mid-batch, within the retry budget", outage, after,
           recovery=outage.back_to_end_seconds,
           outcome="every job catalogued by the same run" if outage.returncode == 0 else f"run exit {outage.returncode}")
    assert outage.returncode == 0, outage.output[-3000:]
    assert "Traceback" not in outage.output, outage.output[-3000:]
    assert after.counts["rendered"] == 0, after.output[-3000:]
    after.assert_nothing_lost()


def test_faults_database_down_longer_than_retries_fails_jobs_clearly_and_a_rerun_completes(
        studio, fault_postgres, fault_log, tmp_path):
    """A job that gives up while the database is down cannot have its failure written then: the run keeps
    it and writes it once the database answers, so no job is left leased when the run ends."""
    gave_up: list[str] = []

    def until_a_leased_job_gave_up(run: Started, leased: dict) -> None:
        # A job the run held when the database went down spends its whole retry budget (ingest, then job
        # attempts) and gives up with the database still down: its failure cannot be written now.
        labels = {f"] failed {job_label(job['record'])}": key for key, job in leased.items()}
        wait_until(lambda: any(line in run.stderr() for line in labels), "a leased job to give up while the "
                   "database was down", run)
        gave_up.extend(key for line, key in labels.items() if line in run.stderr())

    outage = outage_mid_batch(studio, tmp_path, fault_postgres, until_a_leased_job_gave_up, hold_renders=True)
    failed = outage.failed_lines()
    states, errors = studio.job_states(), studio.job_errors()  # what the run itself left, before any re-run
    after = studio.rerun(outage.manifest, JOBS)
    record(fault_log, "database (PostgreSQL) down mid-batch, longer than the retry budget", outage, after,
           recovery=outage.back_to_end_seconds + after.seconds,
           outcome=f"{len(failed)} job(s) failed naming the database, the others retried and succeeded")
    assert outage.returncode == 1, outage.output[-3000:]
    assert failed, outage.output[-3000:]
    for line in failed:  # the reason names what was down: the database server's address
        assert f"port {fault_postgres.port} failed" in line, line
    # The failure the database could not take while it was down was written by the same run once it was
    # back: the job it held is failed with its reason, and no job is left leased by a run that has ended.
    assert gave_up and states["running"] == 0, (gave_up, states)
    for key in gave_up:
        assert errors.get(key, "").startswith("gave up after retries: ") and f"port {fault_postgres.port}" in errors[key]
    assert "NOT recorded" not in outage.output, outage.output[-3000:]
    fault_log.record("database down when a leased job's failure was written (the run lives on)",
                     jobs_in_flight=len(gave_up), lost=after.lost, recovery_seconds=round(outage.back_to_end_seconds, 1),
                     outcome=f"the run kept {len(gave_up)} failure(s) and wrote them once the database answered: "
                             "no job left leased when it ended", backend="postgres+s3",
                     left_for_the_next_run=f"{states['running']} lease(s)")
    # (a job whose commit landed as the server went down is done though reported failed: the re-run skips it)
    assert 0 < after.counts["rendered"] <= len(failed), after.output[-3000:]
    after.assert_nothing_lost()


def test_faults_database_down_as_a_failure_is_written_and_its_run_dies_is_repaired_from_another_host(
        studio, fault_postgres, fault_log, tmp_path):
    """The run that could not write a job's failure is killed before the database comes back, on another host
    (no process-id check can tell it is gone): `catalogue check --repair` here sees its leases stay silent
    while the database answers, and plans their jobs again — seconds after, not a lease later."""
    run, manifest, in_flight = start_batch(studio, tmp_path, LINSTUDIO_WORKER_NAME="farm-b",
                                           LINSTUDIO_LEASE_SECONDS=DEAD_RUN_LEASE_S)
    fault_postgres.stop()
    wait_until(lambda: "] failed " in run.stderr(), "a job to give up while the database was down", run)
    run.kill()  # dies holding the job it could not fail (and whatever else it had claimed)
    fault_postgres.start()
    back = time.monotonic()

    # 1. The fault is real: the dead run's leases are held, not expired, and check says nothing is wrong.
    held = {key: job for key, job in studio.catalogue.jobs(list(studio.catalogue.submission_job_keys(
        studio.catalogue.submissions()[0]["submission_id"]))).items() if job["state"] == "running"}
    assert held and all(job["lease_owner"] == f"farm-b/{run.pid}" for job in held.values()), held
    _, before = studio.check()
    assert before["expired_leases"] == [], before

    # 2. Repair from this host: the leases go silent, so they are released.
    repaired = studio.check("--repair")[1]
    repair_seconds = time.monotonic() - back
    released = {a["data"]["job_key"] for a in repaired["actions"] if a["kind"] == "release-silent-lease"}
    assert released == set(held), repaired["actions"]
    assert all(f"lease of farm-b/{run.pid}" in a["detail"] for a in repaired["actions"]
               if a["kind"] == "release-silent-lease")
    assert repaired["ok"], repaired
    assert repair_seconds < int(DEAD_RUN_LEASE_S) / 2, f"{repair_seconds:.0f} s: no better than the lease's expiry"
    assert {studio.catalogue.job(key)["state"] for key in held} == {"planned"}

    # 3. The next run renders them, each once.
    after = studio.rerun(manifest, JOBS)
    fault_log.record("database down as a job's failure was written, its run killed before it came back "
                     "(another host)", jobs_in_flight=in_flight, lost=after.lost,
                     recovery_seconds=round(repair_seconds + after.seconds, 1),
                     outcome=f"check --repair released the dead run's {len(held)} silent lease(s) "
                             f"{repair_seconds:.0f} s after the database was back (lease {DEAD_RUN_LEASE_S} s); "
                             f"re-run rendered {after.counts['rendered']}",
                     backend="postgres+s3", left_for_the_next_run=f"{len(held)} lease(s) of the dead run")
    after.assert_nothing_lost()


GOOD = """
version: 1
team: game
project: finish
defaults: {model: tiny-sd15, steps: 2, sizes: [64x64]}
assets:
  - id: crate
    prompt: "a wooden crate"
    seeds: [1, 2]
"""
BAD = """
version: 1
team: game
project: finish
defaults: {model: tiny-sd15, steps: 2, sizes: [64x64]}
assets:
  - id: street
    prompt: "a plain street"
    seeds: [1]
  - id: skyline
    prompt: "a controlled skyline"
    seeds: [1]
    controlnet:
      - {type: canny, image: controls/map.png, scale: 0.8}
"""
ELSEWHERE = """
version: 1
team: game
project: finish
defaults: {model: tiny-sd15, steps: 2, sizes: [64x64]}
assets:
  - id: lamp
    prompt: "a lamp another run is rendering"
    seeds: [1]
"""


def test_faults_database_down_as_a_run_finishes_its_submissions_is_settled_from_the_catalogue(
        studio, fault_postgres, fault_log, tmp_path):
    """Every job has ended when the database goes away under the run recording its submissions' outcomes:
    they stay `running`. `linstudio submissions ls`, once the database is back, settles each from its jobs —
    done, or failed with why — and leaves one whose job a live run still holds."""
    good = write_manifest(tmp_path / "good", "props.yaml", GOOD)
    bad = write_manifest(tmp_path / "bad", "inputs.yaml", BAD)
    (tmp_path / "bad" / "controls").mkdir()
    (tmp_path / "bad" / "controls" / "map.png").write_bytes(png_with_short_pixel_data())
    (elsewhere,) = job_records([write_manifest(tmp_path / "other", "lamp.yaml", ELSEWHERE)])
    stall = tmp_path / "stall"
    stall.mkdir()
    run = studio.start("run", "--json", str(good), str(bad),
                       launcher=[str(KILLPOINT), "--at", "finish", "--stall", str(stall)])
    wait_until(lambda: (stall / "reached-1").exists(), "the run to finish its jobs", run)
    # Meanwhile another run is on a job of a third submission (it planned and leased it just now).
    live = plan(studio.catalogue, [elsewhere])
    assert studio.catalogue.claim(elsewhere["key"], "farm-c/4242", 900)
    fault_postgres.stop()
    (stall / "go-1").touch()
    returncode = run.wait()
    summary = run.summary()
    fault_postgres.start()
    back = time.monotonic()

    # 1. The fault is real: every job ended, but neither submission's outcome was written.
    assert returncode == 1 and summary["counts"]["failed"] == 1, summary  # the cut control map
    unrecorded = summary["unrecorded_submissions"]
    assert len(unrecorded) == 2, summary
    statuses = {row["submission_id"]: row for row in studio.catalogue.submissions()}
    assert {statuses[sid]["status"] for sid in [*unrecorded, live]} == {"running"}
    good_id, bad_id = sorted(unrecorded, key=lambda sid: statuses[sid]["manifest_path"] != str(good))

    # 2. `submissions ls` settles the two from the catalogue and leaves the live one.
    listed = studio.linstudio("submissions", "ls", "--json")
    settle_seconds = time.monotonic() - back
    assert listed.returncode == 0, listed.stderr
    rows = {row["submission_id"]: row for row in json.loads(listed.stdout)}
    assert (rows[good_id]["status"], rows[good_id]["error"]) == ("done", None)
    assert rows[bad_id]["status"] == "failed"
    why = rows[bad_id]["error"]
    assert why.startswith("1 job(s) failed: ") and f"{bad}:" in why and "ConditioningInputError" in why, why
    assert "settled from the catalogue" in why, why
    assert rows[live]["status"] == "running"  # its job is still leased: a run is on it
    assert f"settled {good_id} done" in listed.stderr and f"settled {bad_id} failed" in listed.stderr
    again = studio.linstudio("submissions", "ls")
    assert "settled" not in again.stderr and f"why: {why}" in again.stdout
    fault_log.record("database down as a run records its submissions' outcomes", jobs_in_flight=0, lost=0,
                     recovery_seconds=round(settle_seconds, 1),
                     outcome="both left running; `submissions ls` settled them from the catalogue (done; failed "
                             "with the job's reason) and left the one whose job a live run holds", backend="postgres+s3")


# -- the errors an outage raises, one call at a time ---------------------------------------------------------


def sleeping_statements(port: int, database: str) -> int:
    """How many `pg_sleep` statements are running in `database` right now."""
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres") as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE 'SELECT pg_sleep%%'",
                            (database,)).fetchone()[0]


@pytest.mark.parametrize("mode", ["fast", "immediate"], ids=["restart", "crash"])
def test_faults_catalogue_connections_survive_a_database_restart(fault_postgres, tmp_path, mode):
    """Every error the catalogue raises while the database goes away is one the flow retries, and the
    first call after it is back succeeds: the pool must not hand out a connection that died with the server."""
    fault_postgres.start()
    database = f"pool_{uuid.uuid4().hex[:12]}"
    fault_postgres.admin(f'CREATE DATABASE "{database}"')
    catalogue = Catalogue.open(fault_postgres.url(database), (tmp_path / "store").as_uri())
    errors: list[BaseException] = []
    try:
        catalogue.migrate()
        assert catalogue.lease_owners() == set()  # a connection now waits in the pool

        def long_statement() -> None:
            try:
                with catalogue.transaction() as session:
                    session.execute(text("SELECT pg_sleep(60)"))
            except Exception as exc:
                errors.append(exc)

        statement = threading.Thread(target=long_statement)
        statement.start()
        deadline = time.monotonic() + 60
        while not sleeping_statements(fault_postgres.port, database):
            assert time.monotonic() < deadline and statement.is_alive(), errors
            time.sleep(0.05)
        fault_postgres.stop(mode)  # mid-statement
        statement.join(timeout=60)
        assert not statement.is_alive(), "a statement hung on a server that is gone"
        with pytest.raises(Exception) as while_down:
            catalogue.claim("no-such-job", "w/1", 60)
        errors.append(while_down.value)
        assert len(errors) == 2 and all(is_transient(e) for e in errors), [repr(e) for e in errors]

        fault_postgres.start()
        assert catalogue.lease_owners() == set()  # first call after the restart, on a pooled connection
    finally:
        catalogue.close()
        fault_postgres.start()
        fault_postgres.admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_faults_store_errors_while_down_are_transient_and_the_client_reconnects(fault_seaweed, monkeypatch):
    """Puts, reads and lists against a stopped SeaweedFS raise errors the flow retries; the same store
    object works again once the server is back (nothing to reopen)."""
    fault_seaweed.start()
    endpoint = fault_seaweed.endpoint
    bucket = f"fault-{uuid.uuid4().hex[:16]}"
    endpoint.client().create_bucket(Bucket=bucket)
    for name, value in (("AWS_ENDPOINT_URL", endpoint.endpoint_url), ("AWS_ACCESS_KEY_ID", endpoint.access_key),
                        ("AWS_SECRET_ACCESS_KEY", endpoint.secret_key), ("AWS_DEFAULT_REGION", endpoint.region)):
        monkeypatch.setenv(name, value)
    store = open_store(f"s3://{bucket}/catalogue")
    store.put("renders/before.png", b"before", "image/png")

    fault_seaweed.stop()
    calls = {"put": lambda: store.put("renders/during.png", b"during", "image/png"),
             "get": lambda: store.get("renders/before.png"),
             "exists": lambda: store.exists("renders/before.png"),
             "list": lambda: list(store.list("renders/"))}
    for name, call in calls.items():
        with pytest.raises(Exception) as caught:
            call()
        assert is_transient(caught.value), f"{name}: {caught.value!r}"
        assert endpoint.endpoint_url in str(caught.value), f"{name}: the error does not name the store's endpoint"

    fault_seaweed.start()
    assert store.get("renders/before.png") == b"before"  # the objects survived the restart
    store.put("renders/after.png", b"after", "image/png")
    assert sorted(store.list("renders/")) == ["renders/after.png", "renders/before.png"]
