"""A worker killed with SIGKILL during a render, an upload or the catalogue write: a re-run finishes
every job, each catalogued exactly once, with no orphan object and no row without its object.

The batch runs through tests/faults/killpoint.py, which kills its own process at the chosen point
(see its docstring). Each test first checks the kill left the mess it is meant to (a held lease,
a half-uploaded ingest, an uncommitted row with its objects stored), then re-runs the manifest as
an operator would and asks `linstudio catalogue check` — after the re-run's own start-of-run
sweep and release of the dead run's leases, which is what repairs the mess. Both backends: the
embedded SQLite + folder and the production PostgreSQL + SeaweedFS.

The render kill on PostgreSQL + SeaweedFS happens "on another host" (the killed run has its own
LINSTUDIO_WORKER_NAME): no process-id check can tell the re-run that the run is gone, only its
leases' silence (catalogue/jobs.py), which the re-run watches at its start — so the jobs come back
in seconds, not after the lease.
"""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest
from fault_support import BACKENDS

# Runs SIGKILLed at three points on two backends (~3 min): `make test-faults` runs these, `make test` does not.
pytestmark = pytest.mark.faults_slow

JOBS = 6
MANIFEST = f"""
version: 1
team: game
project: kill
defaults: {{model: tiny-sd15, steps: 2, guidance: 5.0, scheduler: euler, sizes: [64x64]}}
assets:
  - id: barrel
    prompt: "a rusty barrel"
    variants: {JOBS}
"""
KILLPOINT = Path(__file__).with_name("killpoint.py")
HANG_GUARD_S = 300
ELSEWHERE = {"LINSTUDIO_WORKER_NAME": "farm-b", "LINSTUDIO_LEASE_SECONDS": "120"}  # a 4 s silence window

# (point, N-th call to die on, what the kill must leave behind for the re-run to repair). Two jobs
# run at once (the flow's submit window), so another job may be mid-ingest too at any kill.
KILLS = [
    pytest.param("render", 3, "lease", id="render"),  # the third render: a job leased by a dead process
    pytest.param("upload", 5, "half-upload", id="upload"),  # an object stored, the ingest's other one not
    pytest.param("catalogue", 3, "uncommitted-row", id="catalogue"),  # the third row never committed
]
DURING = {"render": "a render", "upload": "an upload", "catalogue": "the catalogue write"}


@pytest.mark.parametrize("studio", BACKENDS, indirect=True)
@pytest.mark.parametrize(("point", "nth", "leaves"), KILLS)
def test_faults_killed_worker_loses_nothing(studio, point, nth, leaves, fault_log, tmp_path):
    manifest = tmp_path / "kill.yaml"
    manifest.write_text(textwrap.dedent(MANIFEST).lstrip())
    elsewhere = point == "render" and studio.kind == "services"
    run = studio.start("run", str(manifest), launcher=[str(KILLPOINT), "--at", point, "--nth", str(nth)],
                       **(ELSEWHERE if elsewhere else {}))
    returncode = run.wait(timeout=HANG_GUARD_S)
    output = run.output()
    assert returncode == -signal.SIGKILL, f"the run was not killed at {point} (exit {returncode}):\n{output[-3000:]}"

    # 1. The kill left what it should: the re-run has something real to repair.
    catalogued = len(studio.catalogued())
    in_flight = JOBS - catalogued
    states = studio.job_states()
    report = studio.check_leftovers()  # every orphan named by an intent; never a row without its object
    assert 0 < in_flight < JOBS, (catalogued, output[-3000:])
    assert states["running"] >= 1, states  # the killed job's lease, held by a process that is gone
    if leaves != "lease":  # objects of the killed ingest are stored with no row (another job may be mid-upload too)
        assert report["orphan_objects"] and report["unfinished_intents"] and not report["ok"], report

    # 2. A re-run finishes the batch: each job exactly once, rows and objects agreeing.
    after = studio.rerun(manifest, JOBS)
    if elsewhere:  # released because their leases stayed silent, not because they expired
        assert f"lease of farm-b/{run.pid}" in after.output and "its run is gone" in after.output, after.output[-3000:]
        assert after.seconds < int(ELSEWHERE["LINSTUDIO_LEASE_SECONDS"]), after.seconds
    fault_log.record(f"worker SIGKILLed during {DURING[point]}" + (" on another host" if elsewhere else ""),
                     jobs_in_flight=in_flight,
                     lost=after.lost, recovery_seconds=round(after.seconds, 1),
                     outcome=f"killed with {catalogued}/{JOBS} catalogued; re-run rendered "
                             f"{after.counts['rendered']}, skipped {after.counts['skipped']}",
                     backend=studio.backend,
                     left_for_the_next_run=f"{states['running']} lease(s) of the dead run, "
                                           f"{len(report['unfinished_intents'])} upload intent(s), "
                                           f"{len(report['orphan_objects'])} orphan object(s)")
    assert after.counts["rendered"] == in_flight and after.counts["skipped"] == catalogued, after.output[-3000:]
    after.assert_nothing_lost()
