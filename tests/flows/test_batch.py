"""The main job end to end: manifests in, catalogued renders out, on both kinds of backend.

Every test here runs the real Prefect flow against the session's Prefect server, the tiny
SD-1.5 model, and either the embedded catalogue (SQLite + folder) or the production parts
(PostgreSQL + SeaweedFS S3).
"""

from __future__ import annotations

import io

import pytest
from flow_support import open_catalogue, write_manifest
from PIL import Image

from flows.batch import ManifestsInvalid
from flows.runs import run_manifests

pytestmark = pytest.mark.services


def test_run_catalogues_every_job_and_a_rerun_renders_nothing(prefect_api, backend, small_manifest):
    summary = run_manifests([small_manifest])
    assert summary.ok, summary.to_text()
    assert summary.counts["rendered"] == 3 and summary.counts["skipped"] == 0

    catalogue = open_catalogue()
    try:
        renders = catalogue.renders(limit=100)
        assert sorted((r["asset_id"], r["seed"], r["width"], r["height"]) for r in renders) == [
            ("barrel", 7, 64, 128), ("crate", 1, 64, 64), ("crate", 2, 64, 64)]
        assert {r["worker"] for r in renders} and all(r["worker"] for r in renders)
        # The stored PNG carries its settings where artists' tools look for them.
        render = catalogue.render(renders[0]["render_id"])
        png = catalogue.store.get(render["object_key"])
        image = Image.open(io.BytesIO(png))
        assert render["prompt"] in image.text["parameters"]
        assert image.size == (render["width"], render["height"])
        assert catalogue.check().ok
    finally:
        catalogue.close()

    again = run_manifests([small_manifest])
    assert again.ok
    assert again.counts["rendered"] == 0 and again.counts["skipped"] == 3


def test_force_renders_again_without_duplicates(prefect_api, backend, small_manifest):
    assert run_manifests([small_manifest]).counts["rendered"] == 3
    forced = run_manifests([small_manifest], force=True)
    assert forced.counts["rendered"] == 3
    catalogue = open_catalogue()
    try:
        renders = catalogue.renders(limit=100)
        assert len(renders) == 3  # one render per job key, replaced, not duplicated
        assert catalogue.check().ok
    finally:
        catalogue.close()


def test_an_invalid_manifest_stops_everything_before_rendering(prefect_api, tmp_path, backend, small_manifest):
    bad = write_manifest(small_manifest.parent, "broken.yaml", """
        version: 1
        team: film
        project: x
        assets:
          - id: shot
            prompt: "a shot"
            sizes: [100x100]
    """)
    with pytest.raises(ManifestsInvalid) as caught:
        run_manifests([small_manifest, bad])
    messages = [str(e) for e in caught.value.errors]
    assert any("broken.yaml:7" in m and "sizes[0]" in m and "multiple of 8" in m for m in messages), messages
    catalogue = open_catalogue()
    try:
        assert catalogue.renders(limit=10) == []
    finally:
        catalogue.close()


def test_one_failing_job_does_not_stop_the_others(prefect_api, backend, small_manifest, monkeypatch):
    import flows.job_runner as tasks

    real = tasks.render_png

    def flaky(record, device, dtype, **kwargs):
        if record["asset_id"] == "barrel":
            raise ValueError("the engine refused this job")
        return real(record, device, dtype, **kwargs)

    monkeypatch.setattr(tasks, "render_png", flaky)
    summary = run_manifests([small_manifest])
    assert summary.counts["rendered"] == 2 and summary.counts["failed"] == 1
    failed = summary.failed[0]
    assert "barrel" in failed.label and "the engine refused this job" in failed.reason
    catalogue = open_catalogue()
    try:
        assert catalogue.job_states([failed.key]) == {failed.key: "failed"}
    finally:
        catalogue.close()
    monkeypatch.setattr(tasks, "render_png", real)
    retry = run_manifests([small_manifest])  # a failed job is taken again by the next run
    assert retry.ok and retry.counts["rendered"] == 1 and retry.counts["skipped"] == 2


def test_a_store_that_blinks_mid_ingest_is_retried(prefect_api, backend, small_manifest, monkeypatch):
    import flows.job_runner as tasks
    from catalogue import Catalogue

    monkeypatch.setattr(tasks, "INGEST_BACKOFF_SECONDS", (0.01,))
    real_ingest = Catalogue.ingest
    calls = {"n": 0}

    def blinking(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("object store unreachable")
        return real_ingest(self, *args, **kwargs)

    monkeypatch.setattr(Catalogue, "ingest", blinking)
    summary = run_manifests([small_manifest])
    assert summary.ok and summary.counts["rendered"] == 3
    assert calls["n"] == 5


def test_a_model_loads_once_per_flow_run(prefect_api, backend, small_manifest):
    from flows import engines

    engines.close_all()
    assert run_manifests([small_manifest]).counts["rendered"] == 3
    loaded = engines.loaded_engines()
    assert [engine.entry.name for engine in loaded] == ["tiny-sd15"]
    assert loaded[0].load_count == 1  # three jobs, one load


def test_a_run_shows_its_progress_and_summary_in_prefect(prefect_api, backend, small_manifest):
    """Jobs are not Prefect tasks (flows/job_runner.py), so the flow run carries what a person
    watching it in the Prefect UI needs: a progress artifact that ends at 100%, and the summary."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey,
                                                ArtifactFilterType)
    from prefect.client.schemas.sorting import ArtifactSort

    summary = run_manifests([small_manifest])
    assert summary.ok and summary.counts["rendered"] == 3
    with get_client(sync_client=True) as client:
        latest = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["linstudio-batch-summary"])),
                                       sort=ArtifactSort.CREATED_DESC, limit=1)[0]
        progress = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[latest.flow_run_id]), type=ArtifactFilterType(any_=["progress"])))
    assert latest.description.startswith("3 rendered, 0 skipped"), latest.description
    assert [a.data for a in progress] == [100.0] and progress[0].description == "3 job(s) to render"


def test_a_shard_that_cannot_read_models_yaml_fails_its_jobs_with_why(prefect_api, backend, small_manifest):
    """A worker whose registry file is broken records each job failed with the reason, so the batch
    waiting on them ends, instead of failing before recording anything (and being sent out again)."""
    from flows.batch import load_and_expand
    from flows.runs import render_planned_jobs
    from linstudio_settings import get_settings

    settings = get_settings()
    ((loaded, jobs),) = load_and_expand([small_manifest], settings)
    catalogue = open_catalogue()
    try:
        submission = catalogue.create_submission(jobs[0].team, jobs[0].project, str(loaded.path), loaded.sha256, 3)
        catalogue.plan_jobs(submission, [job.to_record() for job in jobs])
        settings.registry_file.parent.mkdir(parents=True, exist_ok=True)
        settings.registry_file.write_text("models: [unclosed")
        summary = render_planned_jobs([job.key for job in jobs], settings=settings)
        assert summary.counts["failed"] == 3
        states = catalogue.job_states([job.key for job in jobs])
        assert set(states.values()) == {"failed"}
        assert all("models.yaml" in o.reason and "not valid YAML" in o.reason for o in summary.outcomes)
    finally:
        catalogue.close()
