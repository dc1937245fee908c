"""A shard that has finished its own jobs helps with the rest of its batch (flows/helping.py)."""

from __future__ import annotations

from pathlib import Path

from flow_support import open_catalogue, write_manifest
from linstudio.settings import get_settings

BATCH = """
version: 1
team: game
project: helping
defaults: {model: tiny-sd15, steps: 2, sizes: [64x64]}
assets:
  - id: crate
    prompt: "a wooden crate"
    seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
  - id: statue
    prompt: "a statue"
    model: tiny-sdxl
    seeds: [0, 1]
"""
OTHER = """
version: 1
team: game
project: elsewhere
defaults: {model: tiny-sd15, steps: 2, sizes: [64x64]}
assets:
  - id: lamp
    prompt: "a lamp"
    seeds: [0, 1]
"""


def plan(catalogue, folder: Path, name: str, text: str):
    """(submission id, records in planned order) for one manifest."""
    from flows.batch import load_and_expand, plan_run

    planned = plan_run(catalogue, load_and_expand([write_manifest(folder, name, text)], get_settings()), force=False)
    return planned.submissions[0], planned.to_render


def test_a_shard_offers_its_own_jobs_then_up_to_as_many_unclaimed_ones_of_its_batch_and_model_from_the_end(
        backend, tmp_path, monkeypatch):
    from flows import shards
    from flows.helping import BatchHelp

    catalogue = open_catalogue()
    try:
        submission, records = plan(catalogue, tmp_path, "batch.yaml", BATCH)
        plan(catalogue, tmp_path, "other.yaml", OTHER)
        crates = [r for r in records if r["model"] == "tiny-sd15"]
        own, siblings = crates[:3], crates[3:]
        catalogue.claim(siblings[0]["key"], "gpu-b/1", 600)  # the sibling shard has started its first job
        # As if seed 8 needed more memory than this shard's pool has.
        monkeypatch.setattr(shards, "needs_large_gpu", lambda records, gib, registry: records[0]["seed"] == 8)
        help = BatchHelp(own, catalogue, [submission], max_gib=40.0, page=3)
        offered = []
        for record in help:
            offered.append(record)
            catalogue.claim(record["key"], "gpu-a/1", 600)  # rendering it, as the job runner would
        expected_help = [r["key"] for r in reversed(siblings[1:]) if r["seed"] != 8][:len(own)]
        assert [r["key"] for r in offered] == [r["key"] for r in own] + expected_help
        assert help.helped == set(expected_help)
        # A helped job is rendered exactly as the shard it was cut into would render it.
        stored = catalogue.jobs(expected_help)
        assert offered[len(own):] == [{**stored[key]["record"], "key": key} for key in expected_help]
    finally:
        catalogue.close()


class CatalogueDown:
    def planned_jobs(self, *args, **kwargs):
        raise ConnectionError("connection refused")


def test_a_catalogue_that_cannot_be_read_ends_the_help_not_the_shard(caplog):
    from flows.helping import BatchHelp

    own = [{"key": "a", "model": "tiny-sd15"}, {"key": "b", "model": "tiny-sd15"}]
    assert list(BatchHelp(own, CatalogueDown(), ["sub-1"])) == own
    assert "stopped helping the batch: ConnectionError: connection refused" in caplog.text


def test_a_shard_run_helping_its_batch_leaves_every_job_catalogued_once(prefect_api, backend, tmp_path,
                                                                        monkeypatch):
    from prefect import flow

    from flows import flow as flow_module
    from flows.runs import render_planned_jobs

    reported = []  # (done, total) at every progress report of the shard runs

    class RecordedProgress(flow_module.ProgressArtifact):
        def _update(self, done: int) -> None:
            reported.append((done, self.total))
            super()._update(done)

    monkeypatch.setattr(flow_module, "ProgressArtifact", RecordedProgress)
    monkeypatch.setattr(flow_module, "PROGRESS_EVERY_SECONDS", 0.0)

    catalogue = open_catalogue()
    try:
        _, records = plan(catalogue, tmp_path, "batch.yaml", BATCH.replace("seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
                                                                          "seeds: [0, 1, 2, 3]"))
        crates = [r["key"] for r in records if r["model"] == "tiny-sd15"]

        @flow(name="test-helping-shard")
        def shard(keys: list[str]):  # inside a flow run, as on a worker: the jobs are read as they start
            return render_planned_jobs(keys, help_batch=True)

        first = shard(crates[:2])  # the shard a worker started first
        assert sorted(o.key for o in first.outcomes if o.status == "rendered") == sorted(crates)
        # Its progress counts the jobs it took on (4 of 4 at the end), never more done than to do.
        assert reported[-1] == (4, 4) and all(done <= total for done, total in reported), reported
        late = shard(crates[2:])  # its sibling, started after all was done
        assert [o.status for o in late.outcomes] == ["skipped", "skipped"]
        rendered = catalogue.rendered_keys(crates + [r["key"] for r in records])
        assert rendered == set(crates), "the other model's jobs are left to a shard of that model"
        assert len(catalogue.renders(limit=100)) == len(crates)
    finally:
        catalogue.close()


def test_the_nightly_cancels_a_shard_run_no_worker_started_and_leaves_a_running_one(prefect_api):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running, Scheduled

    from flows.shards import cancel_if_waiting

    @flow(name="test-helping-waiting-shard")
    def waiting_shard():
        return None

    with get_client(sync_client=True) as client:
        scheduled = client.create_flow_run(waiting_shard, state=Scheduled())
        running = client.create_flow_run(waiting_shard, state=Running())
        assert cancel_if_waiting(scheduled.id) is True
        assert cancel_if_waiting(running.id) is False
        assert client.read_flow_run(scheduled.id).state.is_cancelled()
        assert client.read_flow_run(running.id).state.is_running()
