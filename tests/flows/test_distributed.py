"""Production shape on one machine: a real Prefect server, deployments, a control worker and two
GPU-pool workers. A nightly batch is spread over both workers; one is killed mid-batch with its
flow-run processes; everything still ends catalogued exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from flow_support import start_logged as _start
from flow_support import wait_for as _wait
from flow_support import write_manifest

pytestmark = [pytest.mark.services, pytest.mark.slow]

BIN = Path(sys.executable).parent

NIGHTLY = """
version: 1
team: film
project: distributed
defaults: {model: tiny-sd15, steps: 6, sizes: [128x128]}
assets:
  - id: street
    prompt: "a street at night"
    variants: 16
"""
JOBS = 16



def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a worker and every process it started (its flow runs), as a crashed host would."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for member in [proc, *family]:
        try:
            os.kill(member.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)



def test_nightly_batch_survives_a_killed_worker(prefect_api, fresh_postgres_url, fresh_s3_store_url, tmp_path,
                                                 session_root):
    from catalogue import Catalogue

    suffix = uuid.uuid4().hex[:6]
    home = tmp_path / "home"
    home.mkdir()
    shared_models = session_root / "home" / "models"  # tiny models built once per test session
    shared_models.mkdir(parents=True, exist_ok=True)
    os.symlink(shared_models, home / "models")
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "LINSTUDIO_HOME": str(home),
           "LINSTUDIO_DATABASE_URL": fresh_postgres_url, "LINSTUDIO_STORE_URL": fresh_s3_store_url,
           "LINSTUDIO_INBOX_URL": f"file://{tmp_path / 'inbox'}", "LINSTUDIO_SHARD_SIZE": "2",
           "LINSTUDIO_LEASE_SECONDS": "15", "LINSTUDIO_WORK_POOL": f"gpu-{suffix}",
           "LINSTUDIO_CONTROL_POOL": f"control-{suffix}", "PREFECT_LOGGING_LEVEL": "INFO"}
    env.pop("PREFECT_LOGGING_TO_API_ENABLED", None)
    deployed = subprocess.run([str(BIN / "linstudio"), "deploy", "--cron", "30 3 * * *", "--timezone",
                               "Europe/London"], env=env, capture_output=True, text=True, timeout=180)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("linstudio-nightly/nightly-batch")
    cron = [s.schedule.cron for s in nightly.schedules]
    assert cron == ["30 3 * * *"] and nightly.schedules[0].schedule.timezone == "Europe/London"

    manifest = write_manifest(tmp_path / "manifests", "night.yaml", NIGHTLY)
    submitted = subprocess.run([str(BIN / "linstudio"), "submit", str(manifest)], env=env, capture_output=True,
                               text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    submission_id = submitted.stdout.split()[1]

    logs = [tmp_path / n for n in ("control.log", "gpu-a.log", "gpu-b.log")]
    workers = {
        "control": _start([str(BIN / "linstudio"), "worker", "--pool", env["LINSTUDIO_CONTROL_POOL"],
                           "--name", "control", "--no-render-host"], env, logs[0]),
        "gpu-a": _start([str(BIN / "linstudio"), "worker", "--pool", env["LINSTUDIO_WORK_POOL"], "--name", "gpu-a",
                         "--preload", "tiny-sd15"], env, logs[1]),
        "gpu-b": _start([str(BIN / "linstudio"), "worker", "--pool", env["LINSTUDIO_WORK_POOL"], "--name", "gpu-b",
                         "--preload", "tiny-sd15"], env, logs[2]),
    }
    # Both GPU workers polling with a warm model before the batch starts: a shard that finishes its own
    # jobs helps with the rest of the batch (flows/helping.py), so a worker that started seconds late
    # could otherwise find nothing left to render.
    _wait(lambda: all(b"started!" in log.read_bytes() and b"preloaded tiny-sd15" in log.read_bytes()
                      for log in logs[1:]), 180, "both GPU workers to start and preload the model", logs)
    catalogue = Catalogue.open(fresh_postgres_url, fresh_s3_store_url)
    try:
        from prefect.deployments import run_deployment

        run_deployment("linstudio-nightly/nightly-batch", timeout=0)

        def makers() -> set[str]:
            return {r["worker"] for r in catalogue.renders(limit=100)}

        def diagnosis() -> str:
            subs = catalogue.submissions(limit=5)
            keys = [k for s in subs for k in catalogue.submission_job_keys(s["submission_id"])]
            jobs = [catalogue.job(k) for k in keys]
            return (f"both GPU workers to catalogue a render (seen: {makers()}); submissions: {subs}; "
                    f"jobs: {[(j['state'], j['lease_owner'], j['error']) for j in jobs if j]}")

        _wait(lambda: {"gpu-a", "gpu-b"} <= makers(), 300, diagnosis, logs)
        _kill_group(workers.pop("gpu-a"))  # the worker and the flow-run process it started

        def finished():
            rows = [s for s in catalogue.submissions(limit=10) if s["submission_id"] == submission_id]
            return rows and rows[0]["status"] in ("done", "failed") and rows[0]

        row = _wait(finished, 400, "the nightly submission to finish", logs)
        assert row["status"] == "done", row
        renders = catalogue.renders(limit=100)
        assert len(renders) == JOBS and len({r["job_key"] for r in renders}) == JOBS  # exactly once each
        assert {"gpu-a", "gpu-b"} <= {r["worker"] for r in renders}
        report = catalogue.check()
        assert report.ok, str(report)
    finally:
        for proc in workers.values():
            _kill_group(proc)
        catalogue.close()
