"""A run killed with SIGKILL mid-batch, then started again, finishes with no duplicate and no orphan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flow_support import write_manifest

from flows.runs import run_manifests

pytestmark = pytest.mark.services

MANY_JOBS = """
version: 1
team: vr
project: crash-test
defaults: {model: tiny-sd15, steps: 4, sizes: [64x64, 128x64]}
assets:
  - id: dome
    prompt: "a sky dome"
    variants: 6
"""


def _render_count(catalogue) -> int:
    return len(catalogue.renders(limit=1000))


def test_killed_run_resumes_without_duplicates_or_orphans(prefect_api, backend, tmp_path):
    from catalogue import Catalogue
    from linstudio.settings import get_settings

    manifest = write_manifest(tmp_path, "dome.yaml", MANY_JOBS)
    settings = get_settings()
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "LINSTUDIO_HOME": str(settings.home)}
    linstudio = str(Path(sys.executable).parent / "linstudio")
    proc = subprocess.Popen([linstudio, "run", str(manifest)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    catalogue = Catalogue.open(settings.resolved_database_url, settings.resolved_store_url)
    catalogue.migrate()
    try:
        deadline = time.time() + 180
        while _render_count(catalogue) < 2:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "the run catalogued nothing in 180 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done_before_resume = _render_count(catalogue)
        assert done_before_resume < 12, "the run finished before it could be killed; make it longer"

        summary = run_manifests([manifest])
        assert summary.ok, summary.to_text()
        renders = catalogue.renders(limit=1000)
        assert len(renders) == 12
        assert len({r["job_key"] for r in renders}) == 12  # exactly once per job
        assert summary.counts["rendered"] == 12 - done_before_resume
        report = catalogue.check()
        assert report.ok, str(report)
    finally:
        if proc.poll() is None:
            proc.kill()
        catalogue.close()
