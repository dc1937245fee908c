"""Disk full in the local store: the jobs that do not fit fail saying so, nothing is half-written, and
after space is freed a re-run completes them.

The store folder is a small tmpfs mounted for the test (the catalogue database stays on the
normal disk, so only the store fills). Mounting needs root, as here and in CI; where it is not
permitted the test fails saying so rather than skipping — a skipped disk-full test proves nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from fault_support import job_records, keys_by_status, lost_jobs, renders_per_key, write_manifest

# `linstudio run` needs a Prefect server; ~45 s for the two: make test-faults-slow (.ci/run) runs them.
pytestmark = [pytest.mark.services, pytest.mark.faults_slow]

# Room for a few 64 px renders (a PNG of ~10 KB and a thumbnail each, in 4 KiB pages), not for twelve.
SMALL = "64k"
ROOMY = "8m"

TWELVE_JOBS = """
version: 1
team: game
project: full-disk
defaults: {model: tiny-sd15, steps: 2, sizes: [64x64]}
assets:
  - id: crate
    prompt: "a wooden crate"
    variants: 12
"""


def mount_tmpfs(folder: Path, size: str) -> None:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a {size} tmpfs at {folder} ({done.stderr.strip() or done.returncode}): the "
                    "disk-full test needs root or CAP_SYS_ADMIN, as CI has", pytrace=False)


def remount(folder: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True, capture_output=True)


def unmount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # busy: detach now, free when released


def files_under(folder: Path) -> set[str]:
    """Every file in the store's folder, temp files included, as store keys."""
    return {(Path(root) / name).relative_to(folder).as_posix()
            for root, _, names in os.walk(folder) for name in names}


def test_a_full_store_fails_the_jobs_that_do_not_fit_and_a_rerun_completes_them(make_studio, tmp_path, fault_log):
    disk = tmp_path / "store-disk"
    disk.mkdir()
    mount_tmpfs(disk, SMALL)
    try:
        store = disk / "store"
        studio = make_studio(f"sqlite:///{tmp_path / 'catalogue.db'}", store.as_uri())
        manifest = write_manifest(tmp_path, "crates.yaml", TWELVE_JOBS)
        keys = {r["key"] for r in job_records([manifest])}

        # 1. The batch that cannot fit: some jobs land, the rest fail saying the store is full, and where.
        status, summary = studio.run(manifest)
        assert status == 1, summary
        by_status = keys_by_status(summary)
        rendered, failed = by_status.get("rendered", set()), by_status.get("failed", set())
        assert rendered and failed and rendered | failed == keys, summary["counts"]
        for job in summary["jobs"]:
            if job["status"] == "failed":
                assert job["reason"].startswith(f"StoreError: no space left on device in the store at {store} "), job

        # 2. Nothing half-written: every file on the disk is an object a render row names (no partial
        # object, no temp file), no upload intent is left, and check is clean.
        catalogue = studio.catalogue
        try:
            named = {key for r in catalogue.renders(limit=100)
                     for key in (r["object_key"], catalogue.render(r["render_id"])["thumb_key"])}
            assert files_under(store) == named
            assert renders_per_key(catalogue) == {key: 1 for key in rendered}
            report = catalogue.check()
            assert report.ok and not report.unfinished_intents, str(report)
            assert {catalogue.job(key)["state"] for key in failed} == {"failed"}

            # 3. Space freed: a re-run renders exactly the jobs that did not fit, each once.
            remount(disk, ROOMY)
            started = time.perf_counter()
            status, rerun = studio.run(manifest)
            recovery_seconds = time.perf_counter() - started
            assert status == 0, rerun
            assert keys_by_status(rerun) == {"rendered": failed, "skipped": rendered}
            assert renders_per_key(catalogue) == {key: 1 for key in keys}
            assert catalogue.check().ok
            fault_log.record("disk full in the local (file://) store", jobs_in_flight=len(keys),
                             lost=len(lost_jobs(catalogue, keys)), recovery_seconds=round(recovery_seconds, 2),
                             outcome=f"{len(failed)} jobs failed naming the full store, nothing half-written; "
                                     "after space was freed the re-run rendered them once",
                             backend="embedded", store_size=SMALL, fitted=len(rendered))
        finally:
            studio.close()  # before the unmount: nothing of the test may hold the disk
    finally:
        unmount(disk)


SMALL_DB = "800k"  # the schema and the batch's plan fit (the WAL grows with every write), a few renders more do not


def test_a_full_disk_under_the_sqlite_catalogue_fails_each_job_at_once_naming_the_file(make_studio, tmp_path,
                                                                                      fault_log):
    """The embedded catalogue's own disk fills mid-batch (the store has room): each job that cannot be
    catalogued fails at once — no retries — with a reason naming the database file; nothing is half-written,
    and once space is freed the re-run (whose start frees the dead leases of this host's run) renders the
    rest once."""
    disk = tmp_path / "db-disk"
    disk.mkdir()
    mount_tmpfs(disk, SMALL_DB)
    try:
        database = disk / "catalogue.db"
        studio = make_studio(f"sqlite:///{database}", (tmp_path / "store").as_uri())
        manifest = write_manifest(tmp_path, "crates.yaml", TWELVE_JOBS)
        keys = {r["key"] for r in job_records([manifest])}

        # 1. The batch that outgrows its database's disk.
        started = time.perf_counter()
        done = studio.linstudio("run", "--json", str(manifest))
        batch_seconds = time.perf_counter() - started
        summary = json.loads(done.stdout) if done.stdout.strip().startswith("{") else None
        assert done.returncode == 1 and summary is not None, done.stdout[-2000:] + done.stderr[-3000:]
        by_status = keys_by_status(summary)
        rendered, failed = by_status.get("rendered", set()), by_status.get("failed", set())
        assert rendered and failed and rendered | failed == keys, summary["counts"]
        expected = f"DatabaseFullError: no space left on device for the catalogue database at {database} "
        for job in summary["jobs"]:
            if job["status"] == "failed":
                assert job["reason"].startswith(expected), job
        assert "attempting it again" not in done.stderr, done.stderr[-3000:]  # failed at once, never retried

        # 2. Nothing half-written: every object in the store is one a render row names.
        catalogue = studio.catalogue
        named = {key for r in catalogue.renders(limit=100)
                 for key in (r["object_key"], catalogue.render(r["render_id"])["thumb_key"])}
        assert files_under(tmp_path / "store") == named
        assert renders_per_key(catalogue) == {key: 1 for key in rendered}
        assert not catalogue.check().missing_objects

        # 3. Space freed: the re-run renders exactly the jobs that did not fit, each once.
        studio.close()
        remount(disk, ROOMY)
        started = time.perf_counter()
        status, rerun = studio.run(manifest)
        recovery_seconds = time.perf_counter() - started
        assert status == 0, rerun
        assert keys_by_status(rerun) == {"rendered": failed, "skipped": rendered}
        assert renders_per_key(studio.catalogue) == {key: 1 for key in keys}
        assert studio.catalogue.check().ok
        fault_log.record("disk full under the embedded (SQLite) catalogue database", jobs_in_flight=len(keys),
                         lost=len(lost_jobs(studio.catalogue, keys)), recovery_seconds=round(recovery_seconds, 2),
                         outcome=f"{len(failed)} jobs failed at once naming {database.name}, none retried, nothing "
                                 "half-written; after space was freed the re-run rendered them once",
                         backend="embedded", database_disk=SMALL_DB, fitted=len(rendered),
                         batch_seconds=round(batch_seconds, 1))
    finally:
        unmount(disk)
