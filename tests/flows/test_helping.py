"""A shard that has finished its own jobs helps with the rest of its batch (flows/helping.py)."""

from __future__ import annotations

from pathlib import Path

from flow_support import write_manifest

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

    planned = plan_run(catalogue, load_and_expand([write_manifest(folder, name, text)]), force=False)
    records = planned.to_render
    return catalogue.jobs([records[0]["key"]])[records[0]["key"]]["submission_id"], records


def open_catalogue():
    from catalogue import Catalogue

    catalogue = Catalogue.from_settings()
    catalogue.migrate()
    return catalogue


def test_a_shard_offers_its_own_jobs_then_its_batchs_unclaimed_ones_of_its_model_from_the_end(backend, tmp_path):
    from flows.helping import BatchHelp

    catalogue = open_catalogue()
    try:
        submission, records = plan(catalogue, tmp_path, "batch.yaml", BATCH)
        plan(catalogue, tmp_path, "other.yaml", OTHER)
        crates = [r for r in records if r["model"] == "tiny-sd15"]
        own, siblings = crates[:4], crates[4:]
        catalogue.claim(siblings[0]["key"], "gpu-b/1", 600)  # the sibling shard has started its first job
        help = BatchHelp(own, catalogue, [submission], page=3,
                         may_render=lambda record: record["seed"] != 8)  # as if seed 8 needed a large GPU
        offered = []
        for record in help:
            offered.append(record)
            catalogue.claim(record["key"], "gpu-a/1", 600)  # rendering it, as the job runner would
        expected_help = [r["key"] for r in reversed(siblings[1:]) if r["seed"] != 8]
        assert [r["key"] for r in offered] == [r["key"] for r in own] + expected_help
        assert help.helped == set(expected_help)
        # A helped job is rendered exactly as the shard it was cut into would render it.
        stored = catalogue.jobs(expected_help)
        assert offered[len(own):] == [{**stored[key]["record"], "key": key} for key in expected_help]
    finally:
        catalogue.close()


def test_a_shard_helping_its_batch_leaves_every_job_catalogued_once(prefect_api, backend, tmp_path):
    from flows.rerender import render_planned_jobs

    catalogue = open_catalogue()
    try:
        _, records = plan(catalogue, tmp_path, "batch.yaml", BATCH.replace("seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
                                                                          "seeds: [0, 1, 2, 3]"))
        crates = [r["key"] for r in records if r["model"] == "tiny-sd15"]
        first = render_planned_jobs(crates[:2], help_batch=True)  # the shard a worker started first
        assert sorted(o.key for o in first.outcomes if o.status == "rendered") == sorted(crates)
        late = render_planned_jobs(crates[2:], help_batch=True)  # its sibling, started after all was done
        assert [o.status for o in late.outcomes] == ["skipped", "skipped"]
        rendered = catalogue.rendered_keys(crates + [r["key"] for r in records])
        assert rendered == set(crates), "the other model's jobs are left to a shard of that model"
        assert len(catalogue.renders(limit=100)) == len(crates)
    finally:
        catalogue.close()
