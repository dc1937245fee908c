"""Production commands: submit for tonight, follow submissions, register deployments, run GPU workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.worker_process import Supervisor, host_environment
from linstudio_settings import get_settings

submissions_app = typer.Typer(help="Submitted manifests and their status.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Attach `submit`, `submissions`, `deploy` and `worker` to the top-level app."""
    app.command("submit")(submit)
    app.add_typer(submissions_app, name="submissions")
    app.command("deploy")(deploy)
    app.command("worker")(worker)


def submit(
    paths: Annotated[list[Path], typer.Argument(help="Manifest files or folders.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the submission ids as JSON.")] = False,
) -> None:
    """Validate manifests and queue them for tonight's batch (the `nightly-batch` deployment).

    Nothing is queued if any manifest is invalid. Each manifest becomes one submission, shown by
    `linstudio submissions ls` as queued, running, done or failed (with why). A manifest already
    queued unchanged is not queued again (said as "already queued"); one queued before an edit is
    replaced by the edited one (the older submission is cancelled: tonight it would be refused).
    """
    import getpass

    # lazy: the catalogue (SQLAlchemy, Pillow, Alembic) stays out of linstudio validate
    # (tests/manifests/test_manifest_cli.py::test_validate_answers_quickly)
    from catalogue import Catalogue
    from flows.batch import ManifestsInvalid, load_and_expand
    from flows.inbox import Inbox, Ticket

    settings = get_settings()
    try:
        expanded = load_and_expand(paths, settings)
    except ManifestsInvalid as exc:
        for error in exc.errors:
            typer.echo(str(error), err=True)
        typer.echo(f"nothing submitted: {len(exc.errors)} error(s)", err=True)
        raise typer.Exit(1)
    inbox = Inbox.from_settings(settings)
    who = f"{getpass.getuser()}@{settings.worker_name}"
    ids = []
    with Catalogue.from_settings(settings) as catalogue:
        catalogue.migrate()
        for loaded, jobs in expanded:
            manifest = loaded.manifest
            submission_id, queued, superseded = catalogue.queue_manifest(
                manifest.team, manifest.project, str(loaded.path), loaded.sha256, len(jobs), who)
            if queued:
                inbox.put(Ticket(submission_id, str(loaded.path), loaded.sha256, Path(loaded.path).read_text(),
                                 manifest.team, manifest.project, who))
            for older in superseded:
                inbox.withdraw(older)
            ids.append({"submission_id": submission_id, "manifest": str(loaded.path), "jobs": len(jobs),
                        "status": "queued" if queued else "already queued", "replaces": superseded})
    if as_json:
        typer.echo(json.dumps(ids, indent=2))
    else:
        for item in ids:
            if item["status"] == "queued":
                replaces = (f"; replaces {', '.join(item['replaces'])} (queued before the manifest changed, now "
                            "cancelled)") if item["replaces"] else ""
                typer.echo(f"queued {item['submission_id']}  {item['manifest']}  ({item['jobs']} jobs){replaces}")
            else:
                typer.echo(f"already queued {item['submission_id']}  {item['manifest']}  ({item['jobs']} jobs): "
                           "unchanged since it was submitted, not queued again")


@submissions_app.command("ls")
def submissions_ls(
    status: Annotated[Optional[str], typer.Option("--status", help="queued, running, done, failed or cancelled.")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Submissions newest first, with status, job counts and why a failed one failed.

    First it settles submissions a run left running although their jobs have all ended (the run died,
    or the database went down as it recorded them), from the catalogue. A queued submission whose
    manifest changed (or vanished) since it was submitted says so: tonight's batch will refuse it.
    """
    # lazy: the catalogue (SQLAlchemy, Pillow, Alembic) stays out of linstudio validate
    # (tests/manifests/test_manifest_cli.py::test_validate_answers_quickly)
    from catalogue import Catalogue
    from flows.inbox import changed_since_submitted
    from flows.settle import settle_running_submissions

    settings = get_settings()
    with Catalogue.from_settings(settings) as catalogue:
        catalogue.migrate()
        for settled in settle_running_submissions(catalogue, settings):
            typer.echo(f"settled {settled.submission_id} {settled.status}: its run ended without recording it",
                       err=True)
        rows = catalogue.submissions(status=status, limit=limit)
    for row in rows:
        row["warning"] = None
        if row["status"] == "queued":
            why = changed_since_submitted(row["manifest_path"], row["manifest_sha256"])
            row["warning"] = f"will be refused tonight: {why}" if why else None
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        jobs = ", ".join(f"{n} {state}" for state, n in sorted(row["jobs"].items())) or f"{row['job_count']} jobs"
        line = f"{row['submission_id']}  {row['status']:<9} {row['team']}/{row['project']}  {jobs}  {row['manifest_path']}"
        why = row.get("error") or row["warning"]
        typer.echo(line + (f"\n    why: {why}" if why else ""))


@submissions_app.command("cancel")
def submissions_cancel(submission_id: Annotated[str, typer.Argument(help="The submission to cancel.")]) -> None:
    """Cancel a queued submission (one already running is not stopped)."""
    # lazy: the catalogue (SQLAlchemy, Pillow, Alembic) stays out of linstudio validate
    # (tests/manifests/test_manifest_cli.py::test_validate_answers_quickly)
    from catalogue import Catalogue
    from flows.inbox import Inbox

    settings = get_settings()
    with Catalogue.from_settings(settings) as catalogue:
        catalogue.migrate()
        if not catalogue.cancel_submission(submission_id):
            typer.echo(f"error: submission {submission_id} is not queued; only a queued submission can be cancelled",
                       err=True)
            raise typer.Exit(1)
    Inbox.from_settings(settings).withdraw(submission_id)
    typer.echo(f"cancelled {submission_id}")


def deploy(
    pool: Annotated[Optional[str], typer.Option("--pool", help="Work pool (default: LINSTUDIO_WORK_POOL).")] = None,
    cron: Annotated[Optional[str], typer.Option("--cron", help="Nightly schedule (default: LINSTUDIO_NIGHTLY_CRON).")] = None,
    timezone: Annotated[Optional[str], typer.Option("--timezone", help="Schedule time zone.")] = None,
) -> None:
    """Register the deployments of prefect.yaml (nightly-batch, rerender, render-shard) with the Prefect server.

    Needs PREFECT_API_URL. Creates the work pool (type process) and its `interactive` (priority 1)
    and `nightly` (priority 10) queues when missing.
    """
    settings = get_settings()
    if not os.environ.get("PREFECT_API_URL"):
        typer.echo("error: set PREFECT_API_URL to the Prefect server (deployments need one)", err=True)
        raise typer.Exit(2)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "LINSTUDIO_CODE_DIR": str(root), "LINSTUDIO_WORK_POOL": pool or settings.work_pool,
           "LINSTUDIO_LARGE_GPU_POOL": settings.large_gpu_pool or pool or settings.work_pool,
           "LINSTUDIO_CONTROL_POOL": settings.control_pool,
           "LINSTUDIO_NIGHTLY_CRON": cron or settings.nightly_cron,
           "LINSTUDIO_NIGHTLY_TIMEZONE": timezone or settings.nightly_timezone}
    prefect = str(Path(sys.executable).parent / "prefect")
    for pool_name in sorted({env["LINSTUDIO_WORK_POOL"], env["LINSTUDIO_LARGE_GPU_POOL"], env["LINSTUDIO_CONTROL_POOL"]}):
        _run([prefect, "work-pool", "create", pool_name, "--type", "process", "--overwrite"], env, root)
        for queue, priority in (("interactive", 1), ("nightly", 10)):
            subprocess.run([prefect, "work-queue", "create", queue, "--pool", pool_name, "--priority", str(priority)],
                           env=env, cwd=root, capture_output=True)
    _run([prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(root / "prefect.yaml")], env, root)
    typer.echo(f"deployed nightly-batch ({env['LINSTUDIO_NIGHTLY_CRON']} {env['LINSTUDIO_NIGHTLY_TIMEZONE']}) and "
               f"rerender on pool {env['LINSTUDIO_CONTROL_POOL']}, render-shard on pool {env['LINSTUDIO_WORK_POOL']}")


def _run(command: list[str], env: dict, cwd: Path) -> None:
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        typer.echo(f"error: {' '.join(command[1:4])} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}", err=True)
        raise typer.Exit(1)


def worker(
    pool: Annotated[str, typer.Option("--pool", help="The work pool to take flow runs from.")],
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="CUDA device index for this worker (sets CUDA_VISIBLE_DEVICES).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Worker name (default: host-gpuN).")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Flow runs at once on this worker (one per GPU).")] = 1,
    render_host: Annotated[bool, typer.Option(
        "--render-host/--no-render-host",
        help="Keep models loaded between flow runs in a long-lived render host (off for pools that only orchestrate).")] = True,
    preload: Annotated[Optional[list[str]], typer.Option(
        "--preload", help="Model to load into the render host at start, so the first shard finds it warm (repeatable).")] = None,
    max_models: Annotated[int, typer.Option(
        "--max-models", help="Models the render host keeps loaded at once; the least recently used are closed.")] = 2,
) -> None:
    """Start a Prefect worker for one GPU, with its render host: run one per GPU on each host (see docs/runbook.md).

    The worker polls its pool every PREFECT_WORKER_QUERY_SECONDS (2 s unless set; Prefect's own
    default is 10 s, which a queued shard would wait on average 5 s for).
    """
    settings = get_settings()
    env = dict(os.environ)
    worker_name = name or (f"{settings.worker_name}-gpu{gpu}" if gpu is not None else settings.worker_name)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    # The flow runs this worker starts inherit its environment: renders record this worker's name.
    env["LINSTUDIO_WORKER_NAME"] = worker_name
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "2")
    # Deployments start flow runs with `python -m prefect.engine` (prefect.yaml): `python` is this one.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Prefect's process worker, except that it stops polling the server while all its slots are busy
    # (flows/prefect_worker.py).
    command = [sys.executable, "-m", "flows.prefect_worker", "--pool", pool, "--name", worker_name,
               "--limit", str(limit)]
    if not render_host:
        os.execve(sys.executable, command, env)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host_args = [arg for model in preload or [] for arg in ("--preload", model)] + ["--max-models", str(max_models)]
    raise typer.Exit(Supervisor(command, host_environment(env, worker_name), host_args).run())
