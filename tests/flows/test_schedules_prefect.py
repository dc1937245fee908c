"""Scheduled re-renders through a real Prefect server and a worker, and on the embedded default.

Production shape: `linstudio deploy` registers the deployments on the session's Prefect server,
one process worker takes both the `rerender` flow runs and their shards, `linstudio schedules` sets
the schedules and `schedules run` starts one through its deployment. The catalogue's record and
Prefect's deployment schedule are read back side by side, so the two cannot drift apart. Embedded default: `linstudio scheduler`
starts its own local Prefect server and runs a due schedule.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flow_support import start_logged as _start
from flow_support import wait_for as _wait

pytestmark = [pytest.mark.services, pytest.mark.slow]

BIN = Path(sys.executable).parent


def _linstudio(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "linstudio"), *args], env=env, capture_output=True, text=True, timeout=timeout)



def _in_process_cli(monkeypatch, env: dict):
    """`linstudio ...` through typer's runner in this process, with `env`'s LINSTUDIO_* settings (this
    process already talks to the session's Prefect server): no torch/Prefect import per command."""
    from typer.testing import CliRunner

    from linstudio.cli import app
    from linstudio.settings import get_settings

    for key, value in env.items():
        if key.startswith("LINSTUDIO_"):
            monkeypatch.setenv(key, value)

    def cli(*args: str):
        get_settings.cache_clear()
        return CliRunner().invoke(app, list(args))

    return cli


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)



def _home(tmp_path: Path, session_root: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    models = session_root / "home" / "models"  # tiny models built once per test session
    models.mkdir(parents=True, exist_ok=True)
    os.symlink(models, home / "models")
    return home


def _sources(database_url: str, store_url: str) -> None:
    """Three catalogued 64 px renders of team `game` on the tiny model, ingested as painted PNGs: the
    sources' own rendering is not under test here, their re-renders are."""
    import io

    from PIL import Image

    from catalogue import Catalogue
    from linstudio_jobs import JobSpec

    catalogue = Catalogue.open(database_url, store_url)
    try:
        catalogue.migrate()
        specs = [JobSpec(team="game", project="test-props", asset_id=asset, prompt=f"a wooden {asset}",
                         negative_prompt="", seed=seed, width=64, height=64, model_identity="tiny", steps=2,
                         guidance=5.0, scheduler="euler", attention="auto", model="tiny-sd15")
                 for asset, seed in (("crate", 1), ("crate", 2), ("barrel", 7))]
        submission = catalogue.create_submission("game", "test-props", "props.yaml", "0" * 64, len(specs))
        catalogue.plan_jobs(submission, [spec.to_record() for spec in specs])
        for n, spec in enumerate(specs):
            buffer = io.BytesIO()
            Image.new("RGB", (64, 64), (40 * n, 120, 200)).save(buffer, format="PNG")
            assert catalogue.claim(spec.key, "seed", 600)
            catalogue.ingest(spec.key, buffer.getvalue(), {**spec.to_record(), "engine": {}, "timings": {}}, "seed")
    finally:
        catalogue.close()


def _approve(catalogue, render_id: str) -> None:
    from catalogue import review

    with catalogue.transaction() as session:
        review.record_review(session, render_id, "approved", "", "artist", catalogue.clock())


def _deployment_schedules(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("linstudio-rerender/rerender")
        schedules = {s.slug: s for s in client.read_deployment_schedules(deployment.id)}
        runs = client.get_scheduled_flow_runs_for_deployments([deployment.id])
    return schedules.get(name), [r for r in runs if (r.parameters or {}).get("schedule") == name]


def test_a_schedule_lands_on_prefect_and_runs_through_a_worker(prefect_api, fresh_postgres_url, fresh_s3_store_url,
                                                              tmp_path, session_root, monkeypatch):
    """The schedule's run is started with `schedules run` rather than awaited at its time: Prefect's
    own scheduler firing a due deployment schedule is proven on the embedded default below. The
    `schedules` commands run in-process (typer's runner, the same settings from the environment):
    the deployment and the worker are the processes under test."""
    from catalogue import Catalogue
    from flows.schedules import parameters

    suffix = uuid.uuid4().hex[:6]
    home = _home(tmp_path, session_root)
    pool = f"studio-{suffix}"
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "LINSTUDIO_HOME": str(home),
           "LINSTUDIO_DATABASE_URL": fresh_postgres_url, "LINSTUDIO_STORE_URL": fresh_s3_store_url,
           "LINSTUDIO_WORK_POOL": pool, "LINSTUDIO_CONTROL_POOL": pool, "PREFECT_LOGGING_LEVEL": "INFO"}
    cli = _in_process_cli(monkeypatch, env)
    deploying = subprocess.Popen([str(BIN / "linstudio"), "deploy"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    _sources(fresh_postgres_url, fresh_s3_store_url)
    output, _ = deploying.communicate(timeout=180)
    assert deploying.returncode == 0, output
    catalogue = Catalogue.open(fresh_postgres_url, fresh_s3_store_url)
    logs = [tmp_path / "worker.log"]
    worker = _start([str(BIN / "linstudio"), "worker", "--pool", pool, "--name", "studio", "--limit", "2",
                     "--no-render-host"], env, logs[0])
    try:
        first, second, third = [r["render_id"] for r in catalogue.renders(team="game", limit=10)]
        _approve(catalogue, first)
        added = cli("schedules", "add", "nightly", "--size", "128x128", "--team", "game",
                           "--status", "approved", "--cron", "0 3 * * *", "--timezone", "Europe/Paris")
        assert added.exit_code == 0, added.output
        assert "1 render(s) today; on the Prefect server" in added.output
        once = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S")
        assert cli("schedules", "add", "once", "--size", "256x256", "--team", "game",
                          "--at", once).exit_code == 0
        _approve(catalogue, second)  # approved after the schedule was set: its run includes it

        # The catalogue's record and Prefect's schedule say the same thing.
        for name, timezone in (("nightly", "Europe/Paris"), ("once", "UTC")):
            on_prefect, _ = _deployment_schedules(name)
            assert on_prefect is not None and on_prefect.active
            assert on_prefect.parameters == parameters(catalogue.schedule(name))
            assert on_prefect.schedule.timezone == timezone
        nightly, _ = _deployment_schedules("nightly")
        assert nightly.schedule.cron == "0 3 * * *"
        assert nightly.parameters["status"] == "approved" and nightly.parameters["sizes"] == ["128x128"]
        assert "COUNT=1" in _deployment_schedules("once")[0].schedule.rrule

        # Run now, through the deployment and the worker.
        started = cli("schedules", "run", "nightly")
        assert started.exit_code == 0 and "started on the Prefect server" in started.output, started.output
        last = _wait(lambda: (run := catalogue.schedule("nightly").last_run) and run.state != "running" and run,
                     240, "the schedule's run to end", logs)
        assert (last.state, last.made, last.skipped, last.failed) == ("completed", 2, 0, 0)
        children = [r for r in catalogue.renders(team="game", limit=20) if r["parent_render_id"]]
        assert sorted(r["parent_render_id"] for r in children) == sorted([first, second])
        assert all(catalogue.render(r["render_id"])["record"]["schedule"] == "nightly" for r in children)
        assert third not in {r["parent_render_id"] for r in children}

        # Pause takes the schedule's next runs off Prefect; resume brings them back.
        assert _wait(lambda: _deployment_schedules("nightly")[1], 60, "Prefect to schedule the nightly runs", logs)
        assert cli("schedules", "pause", "nightly").exit_code == 0
        paused, _ = _deployment_schedules("nightly")
        assert not paused.active
        _wait(lambda: not _deployment_schedules("nightly")[1], 60, "the paused schedule's runs to go", logs)
        assert cli("schedules", "resume", "nightly").exit_code == 0
        assert _deployment_schedules("nightly")[0].active
        assert _wait(lambda: _deployment_schedules("nightly")[1], 60, "the resumed schedule's runs", logs)

        listed = cli("schedules", "ls")
        assert "nightly" in listed.output and "completed made 2 skipped 0 failed 0" in listed.output

        # rm leaves the re-renders it made.
        for name in ("nightly", "once"):
            assert cli("schedules", "rm", name).exit_code == 0
            assert _deployment_schedules(name)[0] is None
        assert catalogue.schedules() == []
        assert len([r for r in catalogue.renders(team="game", limit=20) if r["parent_render_id"]]) == 2
    finally:
        _stop(worker)
        catalogue.close()
        from linstudio.settings import get_settings

        get_settings.cache_clear()  # the next test reads its own environment


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_on_the_embedded_default_linstudio_scheduler_runs_a_due_schedule(tmp_path, session_root):
    from catalogue import Catalogue

    home = _home(tmp_path, session_root)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PREFECT_API", "LINSTUDIO_DATABASE", "LINSTUDIO_STORE"))}
    env.update(LINSTUDIO_HOME=str(home), PREFECT_LOGGING_LEVEL="INFO")
    log = tmp_path / "scheduler.log"
    # The scheduler starts its local Prefect server while the sources render.
    port = _free_port()
    scheduler = _start([str(BIN / "linstudio"), "scheduler", "--port", str(port)], env, log)
    catalogue = None
    try:
        _sources(f"sqlite:///{home / 'catalogue.db'}", f"file://{home / 'store'}")
        _wait(lambda: "serving schedules through" in log.read_text(errors="replace"), 180,
              "the scheduler's local Prefect server", [log])
        at = (datetime.now(UTC) + timedelta(seconds=40)).strftime("%Y-%m-%dT%H:%M:%S")
        added = _linstudio(env, "schedules", "add", "tonight", "--size", "128x128", "--team", "game", "--at", at)
        assert added.returncode == 0 and "runs while `linstudio scheduler` runs" in added.stdout, added.stderr
        catalogue = Catalogue.open(f"sqlite:///{home / 'catalogue.db'}", f"file://{home / 'store'}")
        last = _wait(lambda: (run := catalogue.schedule("tonight").last_run) and run.state != "running" and run,
                     180, "the scheduler to run the due schedule", [log])
        assert (last.state, last.made, last.failed) == ("completed", 3, 0)
        # A SIGTERM to its process group (a terminal's Ctrl-C does the same with SIGINT) stops the
        # scheduler and then its server: the server, in a group of its own, outlives the runner's
        # shutdown (both stopped at once left the runner retrying a dead server for ~30 s).
        os.killpg(scheduler.pid, signal.SIGTERM)
        assert scheduler.wait(timeout=25) is not None
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, "the local Prefect server outlived its scheduler"
    finally:
        if scheduler.poll() is None:
            _stop(scheduler)
        if catalogue is not None:
            catalogue.close()
