"""Two batches submitted at once whose manifests share jobs: each job is rendered once, by one of them.

Two `linstudio run` processes start together on a catalogue neither has opened yet (so they also
race to create its schema). Both plan the shared jobs; leases decide who renders each; the other
reports it skipped — already catalogued, or running elsewhere. The catalogue is the oracle: one
render per job key, no orphan object, `check` clean. On SQLite this is two writers on one file.
"""

from __future__ import annotations

import time

import pytest
from fault_support import (
    job_records,
    keys_by_status,
    lost_jobs,
    make_cli_studio,
    renders_per_key,
    summary_of,
    write_manifest,
)

pytestmark = pytest.mark.services  # `linstudio run` needs a Prefect server

SHARED_SEEDS = list(range(1, 17))


def manifest_body(own_asset: str) -> str:
    return f"""
        version: 1
        team: game
        project: overlap
        defaults: {{model: tiny-sd15, steps: 2, sizes: [64x64]}}
        assets:
          - id: crate
            prompt: "a wooden crate"
            seeds: {SHARED_SEEDS}
          - id: {own_asset}
            prompt: "a {own_asset} of its own"
            seeds: [1, 2]
    """


@pytest.fixture
def cli(request, catalogue_urls):
    return make_cli_studio(request, catalogue_urls.database_url, catalogue_urls.store_url)


def test_two_batches_with_shared_jobs_render_each_job_once(cli, catalogue_urls, tmp_path, fault_log):
    first = write_manifest(tmp_path / "team-a", "props.yaml", manifest_body("barrel"))
    second = write_manifest(tmp_path / "team-b", "props.yaml", manifest_body("lamp"))
    first_keys = {r["key"] for r in job_records([first])}
    second_keys = {r["key"] for r in job_records([second])}
    shared = first_keys & second_keys
    assert len(shared) == len(SHARED_SEEDS)  # same settings, other file: the same jobs

    started = time.perf_counter()
    runs = [cli.start("run", "--json", str(first)), cli.start("run", "--json", str(second))]
    summaries = []
    try:
        for run in runs:
            out, err = run.communicate(timeout=300)
            summaries.append(summary_of(run.returncode, out, err))
            assert run.returncode == 0, (summaries[-1], err[-3000:])
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.communicate()
    seconds = time.perf_counter() - started

    rendered = [keys_by_status(summary).get("rendered", set()) for summary in summaries]
    skipped = [keys_by_status(summary).get("skipped", set()) for summary in summaries]
    for summary, keys, done, passed in zip(summaries, (first_keys, second_keys), rendered, skipped):
        assert summary["counts"]["failed"] == 0, summary
        assert done | passed == keys and not done & passed  # each of its jobs: rendered here, or by the other
        for job in summary["jobs"]:
            if job["status"] == "skipped":
                assert job["key"] in shared and job["reason"] in (None, "running elsewhere (leased by another worker)")
    assert not rendered[0] & rendered[1], "a job was rendered by both batches"
    assert rendered[0] | rendered[1] == first_keys | second_keys

    catalogue = cli.catalogue()
    try:
        assert renders_per_key(catalogue) == {key: 1 for key in first_keys | second_keys}
        report = catalogue.check()
        assert report.ok and not report.unfinished_intents, str(report)
        assert set(catalogue.job_states(first_keys | second_keys).values()) == {"done"}
        racing = sum(job["reason"] is not None for summary in summaries for job in summary["jobs"])
        fault_log.record("two batches at once with overlapping jobs", jobs_in_flight=len(first_keys | second_keys),
                         lost=len(lost_jobs(catalogue, first_keys | second_keys)), recovery_seconds=None,
                         outcome="every job rendered once, by one batch; the other reported it skipped",
                         backend=catalogue_urls.kind, shared_jobs=len(shared),
                         rendered_by=[len(done) for done in rendered], skipped_while_leased=racing,
                         both_runs_seconds=round(seconds, 2))
    finally:
        catalogue.close()
