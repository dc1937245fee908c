"""`linstudio catalogue check --repair`: each problem `check` finds, made for real, repaired, and re-rendered once.

Every test runs twice (`BACKENDS`): SQLite + a folder, and PostgreSQL + SeaweedFS S3. Problems are made the way they happen — an object deleted or overwritten in the
store, a stray object, a worker that died holding a lease, an ingest caught mid-upload — and the
CLI is run as an operator would. `check` (plain, read-only) is the oracle before and after.
"""

from __future__ import annotations

import io
import os
import threading
import time
from datetime import timedelta

import pytest
from fault_support import BACKENDS, BACKENDS_EMBEDDED_IN_CI, job_records, keys_by_status, lost_jobs, plan, renders_per_key, write_manifest
from PIL import Image

from catalogue import Catalogue
from catalogue.ids import utcnow

CRATES = """
version: 1
team: game
project: repair
defaults: {model: tiny-sd15, steps: 2, sizes: [64x64]}
assets:
  - id: crate
    prompt: "a wooden crate"
    seeds: [1, 2, 3, 4]
"""

LATE = """
version: 1
team: game
project: repair
defaults: {model: tiny-sd15, steps: 2, sizes: [64x64]}
assets:
  - id: barrel
    prompt: "a rusty barrel"
    seeds: [9]
"""

ORPHAN_KEY = "renders/game/repair/stray/planted.png"
REMOVED = "repaired by catalogue check --repair"


def png_bytes(color=(10, 120, 200), size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def ingested(catalogue, record: dict, worker: str = "w1", color=(10, 120, 200)) -> str:
    """Plan, claim and catalogue `record` with a small PNG, as a finished render would be; its render id."""
    plan(catalogue, [record])
    assert catalogue.claim(record["key"], worker, 600)
    return catalogue.ingest(record["key"], png_bytes(color), record, worker)


def lease_expired_elsewhere(catalogue, key: str) -> None:
    """Lease job `key` to a worker on another host that died an hour ago (its 60 s lease long expired)."""
    an_hour_ago = Catalogue(catalogue.engine, catalogue.store, clock=lambda: utcnow() - timedelta(hours=1))
    assert an_hour_ago.claim(key, "render-host-7/4242", 60)


def actions_of(report: dict, kind: str) -> list[dict]:
    return [a for a in report["actions"] if a["kind"] == kind]


@pytest.mark.services  # `linstudio run` needs a Prefect server
@pytest.mark.parametrize("studio", BACKENDS_EMBEDDED_IN_CI, indirect=True)
def test_repair_mends_every_problem_and_the_next_run_renders_exactly_those_jobs(studio, tmp_path, fault_log):
    crates = write_manifest(tmp_path, "crates.yaml", CRATES)
    late = write_manifest(tmp_path, "late.yaml", LATE)
    status, first = studio.run(crates)
    assert status == 0 and first["counts"]["rendered"] == 4, first
    catalogue = studio.catalogue
    # 1. Make each problem for real.
    missing, corrupt, no_thumb, intact = sorted(catalogue.renders(limit=10), key=lambda r: r["seed"])
    catalogue.store.delete(missing["object_key"])
    catalogue.store.put(corrupt["object_key"], b"not the render any more", "image/png")
    catalogue.store.delete(catalogue.render(no_thumb["render_id"])["thumb_key"])
    catalogue.store.put(ORPHAN_KEY, png_bytes(), "image/png")
    (late_record,) = job_records([late])
    plan(catalogue, [late_record])
    lease_expired_elsewhere(catalogue, late_record["key"])

    # 2. Plain check finds all of it and changes nothing.
    listed = sorted([*catalogue.store.list("renders/"), *catalogue.store.list("thumbs/")])
    for _ in range(2):
        status, found = studio.check()
        assert status == 1 and found["ok"] is False
        assert sorted(p["render_id"] for p in found["missing_objects"]) == sorted(
            [missing["render_id"], no_thumb["render_id"]])
        assert [p["render_id"] for p in found["corrupt_objects"]] == [corrupt["render_id"]]
        assert [p["key"] for p in found["orphan_objects"]] == [ORPHAN_KEY]
        assert [p["job_key"] for p in found["expired_leases"]] == [late_record["key"]]
    assert sorted([*catalogue.store.list("renders/"), *catalogue.store.list("thumbs/")]) == listed
    assert catalogue.job(late_record["key"])["state"] == "running"

    # 3. Repair (human output: an operator reads it), naming each action.
    started = time.perf_counter()
    repaired = studio.linstudio("catalogue", "check", "--repair", "--orphan-grace", "0")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    text = repaired.stdout
    assert "5 action(s) done, 0 problem(s) left" in text
    assert f"release-lease job {late_record['key']}: lease of render-host-7/4242 expired" in text
    assert f"remove-render render {missing['render_id']}: PNG missing; row removed" in text
    assert f"remove-render render {corrupt['render_id']}: PNG corrupt; row removed" in text
    assert f"remake-thumbnail render {no_thumb['render_id']}: thumbnail missing; made again from the PNG" in text
    assert f"delete-orphan {catalogue.store.uri(ORPHAN_KEY)}: no render row and no upload intent" in text
    assert text.rstrip().endswith("consistent") and "NOT consistent" not in text

    # 4. What the repair left: check clean, removed renders' jobs failed with the reason, the lease free.
    status, after = studio.check()
    assert status == 0 and after["ok"], after
    assert not catalogue.store.exists(ORPHAN_KEY)
    for gone in (missing, corrupt):
        assert catalogue.render(gone["render_id"]) is None
        job = catalogue.job(gone["job_key"])
        assert job["state"] == "failed" and REMOVED in job["error"], job
    assert catalogue.job(missing["job_key"])["error"] == f"object missing; {REMOVED}"
    assert catalogue.job(corrupt["job_key"])["error"] == f"object corrupt; {REMOVED}"
    assert catalogue.render(no_thumb["render_id"]) is not None  # kept: only its thumbnail was remade
    assert catalogue.job(late_record["key"])["state"] == "planned"

    # 5. The next run renders exactly the repaired jobs, each once.
    status, rerun = studio.run(crates, late)
    recovery_seconds = time.perf_counter() - started
    assert status == 0, rerun
    by_status = keys_by_status(rerun)
    assert by_status["rendered"] == {missing["job_key"], corrupt["job_key"], late_record["key"]}
    assert by_status["skipped"] == {no_thumb["job_key"], intact["job_key"]}
    every_key = [job["key"] for job in first["jobs"]] + [late_record["key"]]
    assert renders_per_key(catalogue) == {key: 1 for key in every_key}
    assert catalogue.check().ok
    fault_log.record("catalogue check --repair: missing, corrupt, orphan, expired lease",
                     jobs_in_flight=1, lost=len(lost_jobs(catalogue, every_key)),
                     recovery_seconds=round(recovery_seconds, 2),
                     outcome="repaired; the next run re-rendered the 3 affected jobs once",
                     backend=studio.kind)


class PausingStore:
    """A store whose first `put` lands and then waits until the test lets the ingest go on: an ingest caught
    between its PNG upload and its thumbnail upload, for as long as the test needs."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.url = inner.url
        self.first_put_landed = threading.Event()
        self.go_on = threading.Event()
        self.puts = 0

    def put(self, key, data, content_type):
        self.inner.put(key, data, content_type)
        self.puts += 1
        if self.puts == 1:
            self.first_put_landed.set()
            assert self.go_on.wait(120), "the test never let the paused ingest go on"

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("studio", BACKENDS, indirect=True)
def test_repair_never_touches_an_object_an_ingest_in_flight_uploaded(studio, tmp_path, fault_log):
    (record,) = job_records([write_manifest(tmp_path, "late.yaml", LATE)])
    catalogue = studio.catalogue
    plan(catalogue, [record])
    assert catalogue.claim(record["key"], "render-host-7/4242", 600)
    pausing = PausingStore(catalogue.store)
    ingesting = Catalogue(catalogue.engine, pausing)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(
        ingesting.ingest(record["key"], png_bytes(), record, "render-host-7/4242")))
    worker.start()
    try:
        assert pausing.first_put_landed.wait(60), "the ingest never uploaded"
        (uploaded,) = list(catalogue.store.list("renders/"))

        status, report = studio.check("--repair", "--orphan-grace", "0")
        assert status == 1, report  # not consistent yet: an ingest is half-way
        assert [p["key"] for p in report["before"]["orphan_objects"]] == [uploaded]
        (kept,) = actions_of(report, "keep-orphan")
        assert kept["done"] is False and kept["target"] == catalogue.store.uri(uploaded)
        assert "named by upload intent" in kept["detail"] and "an ingest in flight" in kept["detail"]
        assert actions_of(report, "delete-orphan") == [] and actions_of(report, "sweep-intent") == []
        assert catalogue.store.exists(uploaded)
    finally:
        pausing.go_on.set()
        worker.join(60)
    assert not worker.is_alive() and len(result) == 1, "the ingest did not finish"
    render = catalogue.render(result[0])
    assert render["object_key"] == uploaded and catalogue.store.exists(uploaded)
    status, after = studio.check()
    assert status == 0 and after["ok"], after
    fault_log.record("catalogue check --repair during an ingest in flight", jobs_in_flight=1,
                     lost=len(lost_jobs(catalogue, [record["key"]])), recovery_seconds=None,
                     outcome="the in-flight upload was left alone and its ingest committed",
                     backend=studio.kind)


@pytest.mark.parametrize("studio", BACKENDS, indirect=True)
def test_repair_reports_what_pointed_at_a_render_it_removes(studio, tmp_path):
    from catalogue.review import record_review
    from flows.rerender import rerender_records

    (record,) = job_records([write_manifest(tmp_path, "late.yaml", LATE)])
    catalogue = studio.catalogue
    source_id = ingested(catalogue, record)
    with catalogue.transaction() as session:
        record_review(session, source_id, "approved", "keep this one", "alice", utcnow())
    done_child, waiting = rerender_records(catalogue.render(source_id), [(128, 128), (128, 64)])
    child_id = ingested(catalogue, done_child, color=(200, 10, 10))
    plan(catalogue, [waiting])
    catalogue.store.delete(catalogue.render(source_id)["object_key"])

    status, report = studio.check("--repair")
    assert status == 0, report
    (removed,) = actions_of(report, "remove-render")
    assert removed["target"] == f"render {source_id}"
    assert [(r["status"], r["reviewer"], r["note"]) for r in removed["data"]["reviews"]] == [
        ("approved", "alice", "keep this one")]
    assert removed["data"]["child_renders"] == [child_id]
    assert removed["data"]["waiting_rerender_jobs"] == [waiting["key"]]
    assert "1 review(s) deleted with it (approved by alice" in removed["detail"]
    assert f"re-render(s) {child_id} keep their images, parent link cleared" in removed["detail"]
    assert f"re-render job(s) {waiting['key'][:12]} will fail" in removed["detail"]

    child = catalogue.render(child_id)
    assert child["parent_render_id"] is None  # the link is cleared, the child and its image stay
    assert child["record"]["parent_render_id"] == source_id  # its record still says where it came from
    assert catalogue.store.exists(child["object_key"])
    assert catalogue.render(source_id) is None
    assert catalogue.job(record["key"])["state"] == "failed"
    assert catalogue.job(waiting["key"])["state"] == "planned"
    assert studio.check()[0] == 0


@pytest.mark.parametrize("studio", BACKENDS, indirect=True)
def test_a_new_orphan_waits_out_the_grace_window(studio):
    catalogue = studio.catalogue
    catalogue.store.put(ORPHAN_KEY, png_bytes(), "image/png")
    status, report = studio.check("--repair")  # default grace: 300 s
    assert status == 1
    (kept,) = actions_of(report, "keep-orphan")
    assert "inside the 300 s grace window" in kept["detail"]
    assert catalogue.store.exists(ORPHAN_KEY)

    if studio.kind == "embedded":  # a folder's mtime can be moved back; S3's LastModified cannot
        path = catalogue.store.root / ORPHAN_KEY
        an_hour_ago = time.time() - 3600
        os.utime(path, (an_hour_ago, an_hour_ago))
        status, report = studio.check("--repair")
    else:
        status, report = studio.check("--repair", "--orphan-grace", "0")
    assert status == 0, report
    assert [a["kind"] for a in report["actions"]] == ["delete-orphan"]
    assert not catalogue.store.exists(ORPHAN_KEY)
