"""Runs that overlap: jobs another live run holds are reported, waited for, or taken back once it dies.

1. Two `linstudio run --wait` processes start together on a catalogue neither has opened yet (so
   they also race to create its schema). Both plan the shared jobs; leases decide who renders each;
   the other reports it skipped — already catalogued, or landed while it waited. On SQLite this is
   two writers on one file.
2. A run "on another host" (its own LINSTUDIO_WORKER_NAME, so no process-id check applies) holds two
   shared jobs, its render stalled by tests/faults/killpoint.py (it lives on and renews its leases).
   Runs without `--wait` watch those leases, see them renewed, and report the jobs running
   elsewhere — count and keys, in the text summary and in --json — and exit 3. A run with `--wait`
   waits: the first job lands (the holder renders it), then the holder is SIGKILLed holding the
   second; the waiting run sees its lease go silent, takes it back and renders it, long before the
   lease would have expired.
The catalogue is the oracle: one render per job key, no orphan object, `check` clean.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fault_support import (
    BACKENDS_EMBEDDED_IN_CI,
    job_records,
    keys_by_status,
    lost_jobs,
    renders_per_key,
    wait_until,
    write_manifest,
)

pytestmark = pytest.mark.services  # `linstudio run` needs a Prefect server

SHARED_SEEDS = list(range(1, 17))
KILLPOINT = Path(__file__).with_name("killpoint.py")
LANDED_ELSEWHERE = "rendered by another run while this one waited"  # flows/waiting.py
EXIT_RUNNING_ELSEWHERE = 3  # linstudio/commands/run.py
HOLDER_LEASE_S = "120"  # the holder's lease: a 4 s silence window (catalogue/jobs.py silence_seconds)


def manifest_body(own_asset: str, seeds=SHARED_SEEDS) -> str:
    return f"""
        version: 1
        team: game
        project: overlap
        defaults: {{model: tiny-sd15, steps: 2, sizes: [64x64]}}
        assets:
          - id: crate
            prompt: "a wooden crate"
            seeds: {list(seeds)}
          - id: {own_asset}
            prompt: "a {own_asset} of its own"
            seeds: [1, 2]
    """


@pytest.mark.parametrize("studio", BACKENDS_EMBEDDED_IN_CI, indirect=True)
def test_two_batches_with_shared_jobs_render_each_job_once(studio, tmp_path, fault_log):
    first = write_manifest(tmp_path / "team-a", "props.yaml", manifest_body("barrel"))
    second = write_manifest(tmp_path / "team-b", "props.yaml", manifest_body("lamp"))
    first_keys = {r["key"] for r in job_records([first])}
    second_keys = {r["key"] for r in job_records([second])}
    shared = first_keys & second_keys
    assert len(shared) == len(SHARED_SEEDS)  # same settings, other file: the same jobs

    started = time.perf_counter()
    runs = [studio.start("run", "--wait", "--json", str(first)), studio.start("run", "--wait", "--json", str(second))]
    summaries = []
    try:
        for run in runs:
            returncode = run.wait()
            summaries.append(run.summary())
            assert returncode == 0, (summaries[-1], run.stderr()[-3000:])
    finally:
        for run in runs:
            if run.alive():
                run.kill()
    seconds = time.perf_counter() - started

    rendered = [keys_by_status(summary).get("rendered", set()) for summary in summaries]
    skipped = [keys_by_status(summary).get("skipped", set()) for summary in summaries]
    for summary, keys, done, passed in zip(summaries, (first_keys, second_keys), rendered, skipped):
        assert summary["counts"]["failed"] == 0 and summary["running_elsewhere"] == [], summary
        assert done | passed == keys and not done & passed  # each of its jobs: rendered here, or by the other
        for job in summary["jobs"]:
            if job["status"] == "skipped":
                assert job["key"] in shared and job["reason"] in (None, LANDED_ELSEWHERE)
    assert not rendered[0] & rendered[1], "a job was rendered by both batches"
    assert rendered[0] | rendered[1] == first_keys | second_keys

    catalogue = studio.catalogue
    assert renders_per_key(catalogue) == {key: 1 for key in first_keys | second_keys}
    report = catalogue.check()
    assert report.ok and not report.unfinished_intents, str(report)
    assert set(catalogue.job_states(first_keys | second_keys).values()) == {"done"}
    waited = sum(job["reason"] == LANDED_ELSEWHERE for summary in summaries for job in summary["jobs"])
    fault_log.record("two batches at once with overlapping jobs (`--wait`)", jobs_in_flight=len(first_keys | second_keys),
                     lost=len(lost_jobs(catalogue, first_keys | second_keys)), recovery_seconds=None,
                     outcome="every job rendered once, by one batch; the other reported it skipped "
                             f"({waited} after waiting for it to land); both exit 0",
                     backend=studio.kind, shared_jobs=len(shared), rendered_by=[len(done) for done in rendered],
                     waited_for=waited, both_runs_seconds=round(seconds, 2))


@pytest.mark.faults_slow  # ~1 minute: a run killed while it holds leases (make test-faults-slow, .ci/run)
def test_jobs_a_live_run_elsewhere_holds_are_reported_waited_for_and_taken_back_when_it_dies(studio, tmp_path,
                                                                                              fault_log):
    holder_manifest = write_manifest(tmp_path / "holder", "crates.yaml", """
        version: 1
        team: game
        project: overlap
        defaults: {model: tiny-sd15, steps: 2, sizes: [64x64]}
        assets:
          - id: crate
            prompt: "a wooden crate"
            seeds: [1, 2]
    """)
    askers = {name: write_manifest(tmp_path / name, "props.yaml", manifest_body(name, seeds=[1, 2]))
              for name in ("text", "json", "waiting")}
    first, second = (r["key"] for r in job_records([holder_manifest]))
    own = {name: {r["key"] for r in job_records([path])} - {first, second} for name, path in askers.items()}

    # 1. The holder, on another host, claims both shared jobs; its first render stalls (the second waits
    # for the render slot), so both leases are held by a live run that renews them.
    stall = tmp_path / "stall"
    stall.mkdir()
    holder = studio.start("run", "--json", str(holder_manifest),
                          launcher=[str(KILLPOINT), "--at", "render", "--stall", str(stall)],
                          LINSTUDIO_WORKER_NAME="farm-b", LINSTUDIO_LEASE_SECONDS=HOLDER_LEASE_S)
    try:
        def held_by_holder() -> bool:
            jobs = studio.catalogue.jobs([first, second])
            return (stall / "reached-1").exists() and all(
                job["state"] == "running" and job["lease_owner"].startswith("farm-b/") for job in jobs.values()) \
                and len(jobs) == 2

        wait_until(held_by_holder, "the holder leasing both shared jobs", holder)

        # 2. Three more runs at once, each with two shared jobs and two of its own. Without --wait: the shared
        # jobs are reported running elsewhere (count and keys), exit 3. With --wait: it waits for them.
        as_text = studio.start("run", str(askers["text"]))
        as_json = studio.start("run", "--json", str(askers["json"]))
        waiting = studio.start("run", "--wait", "--json", str(askers["waiting"]))
        assert as_text.wait() == EXIT_RUNNING_ELSEWHERE, as_text.output()[-3000:]
        assert as_json.wait() == EXIT_RUNNING_ELSEWHERE, as_json.output()[-3000:]
        text = as_text.stdout()
        assert "2 rendered, 0 skipped (already catalogued), 2 running elsewhere, 0 failed" in text, text
        for key in (first, second):
            line = next(line for line in text.splitlines() if key in line)
            assert line.lstrip().startswith("RUNNING ELSEWHERE game/overlap/crate 64x64") and "leased by farm-b/" in line
        assert "`linstudio run --wait` waits for them" in text
        summary = as_json.summary()
        assert summary["counts"] == {"rendered": 2, "skipped": 0, "running_elsewhere": 2, "failed": 0}, summary
        assert sorted(summary["running_elsewhere"]) == sorted([first, second])
        assert keys_by_status(summary) == {"rendered": own["json"], "running_elsewhere": {first, second}}
        wait_until(lambda: "waiting for 2 job(s) running elsewhere" in waiting.stderr(), "the run to wait", waiting)

        # 3a. The holder renders the first: it lands, and the waiting run reports it so.
        (stall / "go-1").touch()
        wait_until(lambda: (stall / "reached-2").exists(), "the holder's second render", holder)
        wait_until(lambda: studio.catalogue.job(first)["state"] == "done", "the first shared job to land", holder)
        # 3b. The holder dies holding the second: the waiting run takes it back once its lease is silent.
        assert studio.catalogue.job(second)["lease_owner"].startswith("farm-b/")
        holder.kill()
        killed = time.monotonic()
        assert waiting.wait() == 0, waiting.output()[-3000:]
        recovery = time.monotonic() - killed
        result = waiting.summary()
        jobs = {job["key"]: job for job in result["jobs"]}
        assert (jobs[first]["status"], jobs[first]["reason"]) == ("skipped", LANDED_ELSEWHERE)
        assert jobs[second]["status"] == "rendered"
        assert result["running_elsewhere"] == [] and result["counts"]["failed"] == 0
        assert f"lease of farm-b/{holder.pid}" in waiting.stderr() and "its run is gone" in waiting.stderr()
        assert recovery < int(HOLDER_LEASE_S) / 2, f"{recovery:.0f} s: no better than waiting for the lease"
    finally:
        for name in ("go-1", "go-2"):
            (stall / name).touch()
        if holder.alive():
            holder.kill()

    every_key = {first, second, *own["text"], *own["json"], *own["waiting"]}
    assert renders_per_key(studio.catalogue) == {key: 1 for key in every_key}
    _, report = studio.check()
    assert report["ok"] and not report["unfinished_intents"], report
    fault_log.record("jobs held by a live run on another host; then that run killed holding one",
                     jobs_in_flight=2, lost=len(lost_jobs(studio.catalogue, every_key)),
                     recovery_seconds=round(recovery, 1),
                     outcome="without --wait: reported running elsewhere with their keys, exit 3; with --wait: "
                             "waited for the first to land, and took the dead run's silent lease back and rendered "
                             f"it (lease {HOLDER_LEASE_S} s, released in {recovery:.0f} s); each job rendered once",
                     backend=studio.kind)
